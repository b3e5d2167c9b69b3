"""The PromQL of the deployment, with promtool (offline): the chart's recording rule and the
Grafana dashboard's queries parse; the rule computes the ensemble's queue time per request
on synthetic series where the answer is known (and Triton's k8s-onprem formula does not);
metric_names finds what a query reads. The same rule on a real server's scrapes:
tests/test_queue_signal.py.
"""

from __future__ import annotations

import pytest

from deploy.checks import helm, promql

DASHBOARD = helm.CHART / "dashboards" / "adaptive-ranking.json"
ENSEMBLE = "adaptive_ranking"
# Per ensemble request (µs) in each model; 10 requests/s on pod p1, p2 idle.
QUEUE_PER_REQUEST_US = {
    "embedding_lookup": 1000,
    "user_tower": 2000,
    "ranker": 0,
    "scorer_light": 500,
    "scorer_heavy": 0,
}
RPS = 10
# Triton's k8s-onprem chart (prometheus-adapter rule): average over models of per-model ratios.
ONPREM = (
    "avg by (namespace, pod) "
    "(delta(nv_inference_queue_duration_us[30s]) / (1 + delta(nv_inference_request_success[30s])))"
)


@pytest.fixture(scope="module")
def rule_groups() -> list[dict]:
    docs = helm.template({"adminKey.value": "k"})
    return next(d for d in docs if d["kind"] == "PrometheusRule")["spec"]["groups"]


def counter(name: str, pod: str, model: str, per_step: float) -> dict:
    labels = f'namespace="ranking",pod="{pod}",model="{model}",version="1"'
    return {"series": f"{name}{{{labels}}}", "values": f"0+{per_step:g}x40"}


def synthetic_series(interval_s: int = 15) -> list[dict]:
    series = [counter("nv_inference_request_success", "p1", ENSEMBLE, RPS * interval_s)]
    series.append(counter("nv_inference_queue_duration_us", "p1", ENSEMBLE, 2 * RPS * interval_s))  # ~0, as measured
    for model, us in QUEUE_PER_REQUEST_US.items():
        requests = RPS * interval_s if us or model != "scorer_heavy" else 0  # heavy idle: light route
        series.append(counter("nv_inference_request_success", "p1", model, requests))
        series.append(counter("nv_inference_queue_duration_us", "p1", model, us * RPS * interval_s))
    series.append(counter("nv_inference_request_success", "p2", ENSEMBLE, 0))
    series.append(counter("nv_inference_queue_duration_us", "p2", "embedding_lookup", 0))
    return series


def test_rule_is_valid_promql(rule_groups):
    result = promql.check_rules(rule_groups)
    assert result.returncode == 0, result.stdout + result.stderr


def test_rule_sums_queue_time_over_models_per_ensemble_request(rule_groups):
    record = rule_groups[0]["rules"][0]["record"]
    want = sum(QUEUE_PER_REQUEST_US.values())  # 3500 µs: what one request waits in all
    test = {
        "interval": "15s",
        "input_series": synthetic_series(),
        "promql_expr_test": [
            {
                "expr": record,
                "eval_time": "5m",
                "exp_samples": [
                    {"labels": f'{record}{{namespace="ranking",pod="p1"}}', "value": want},
                    {"labels": f'{record}{{namespace="ranking",pod="p2"}}', "value": 0},  # idle: 0, not NaN
                ],
            }
        ],
    }
    result = promql.test_rules(rule_groups, [test])
    assert result.returncode == 0, result.stdout + result.stderr


def test_onprem_formula_under_reports_the_same_load():
    # The fault the chart avoids (server#8979): the same series read by the k8s-onprem formula.
    groups = [{"name": "onprem", "rules": [{"record": "onprem:avg_time_queue_us", "expr": ONPREM}]}]
    test = {
        "interval": "15s",
        "input_series": synthetic_series(),
        "promql_expr_test": [
            {
                "expr": 'onprem:avg_time_queue_us{pod="p1"} < bool 1000',
                "eval_time": "5m",
                "exp_samples": [{"labels": '{namespace="ranking",pod="p1"}', "value": 1}],
            }
        ],
    }
    result = promql.test_rules(groups, [test])
    assert result.returncode == 0, result.stdout + result.stderr  # < 1000 µs where requests wait 3500


def test_dashboard_queries_are_valid_promql():
    queries = promql.dashboard_queries(promql.load_dashboard(DASHBOARD))
    assert len(queries) >= 10
    rules = [{"record": f"dashboard:{key.replace(':', '_')}", "expr": expr} for key, expr in queries.items()]
    result = promql.check_rules([{"name": "dashboard", "rules": rules}])
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_recorded_series_come_from_the_chart(rule_groups):
    recorded = {r["record"] for g in rule_groups for r in g["rules"]}
    read = set().union(*map(promql.metric_names, promql.dashboard_queries(promql.load_dashboard(DASHBOARD)).values()))
    assert {name for name in read if ":" in name} <= recorded


def test_dashboard_check_rejects_a_broken_query():
    rules = [{"record": "dashboard:bad", "expr": "sum(rat(nv_inference_request_success[1m]))"}]
    result = promql.check_rules([{"name": "dashboard", "rules": rules}])
    assert result.returncode != 0 and "rat" in result.stdout + result.stderr


@pytest.mark.parametrize(
    "expr, names",
    [
        ('rate(a_total{model="x{y}"}[1m])', {"a_total"}),
        ("sum by (model, pod) (b) / clamp_min(sum by (pod) (c:d[5m] offset 1h), 1e-9)", {"b", "c:d"}),
        ("histogram_quantile(0.99, sum by (le) (rate(e_bucket[1m]))) > bool 2.5e3", {"e_bucket"}),
        ("f and on (pod) g unless ignoring (model) h", {"f", "g", "h"}),
    ],
    ids=["matchers", "grouping-offset-number", "functions", "set-operators"],
)
def test_metric_names(expr, names):
    assert promql.metric_names(expr) == names
