"""Every offline check of deploy/ in one command (``make deploy-validate``): helm lint --strict,
the rendered chart and the KServe / KubeRay manifests against the Kubernetes and CRD schemas,
serveConfigV2 against Ray Serve's schema, the chart's rule and the dashboard's queries with
promtool. The tests (tests/test_deploy_*.py) check the same and that each check rejects what
it must.

    python -m deploy.checks
"""

from __future__ import annotations

import logging
import sys

from deploy.checks import helm, promql
from deploy.checks.manifests import KUBERNETES_VERSION, load_yaml_documents, validate_documents
from deploy.checks.serve_config import serve_config_errors

log = logging.getLogger("deploy.checks")
MANIFESTS = ("kserve/servingruntime.yaml", "kserve/inferenceservice.yaml", "kserve/prometheusrule.yaml",
             "kuberay/rayservice.yaml")  # fmt: skip


def run_checks() -> list[str]:
    """The problems found; [] when everything passes."""
    problems = []
    lint = helm.lint({"adminKey.value": "check"})
    if lint.returncode != 0:
        problems.append(f"helm lint --strict: {lint.stdout}{lint.stderr}")
    rendered = helm.template({"adminKey.value": "check"})
    docs = rendered + [d for name in MANIFESTS for d in load_yaml_documents((helm.ROOT / "deploy" / name).read_text())]
    problems += validate_documents(docs)
    for doc in docs:
        if doc["kind"] == "RayService":
            problems += serve_config_errors(doc["spec"]["serveConfigV2"])
    rules = [g for d in docs if d["kind"] == "PrometheusRule" for g in d["spec"]["groups"]]
    queries = promql.dashboard_queries(promql.load_dashboard(helm.CHART / "dashboards" / "adaptive-ranking.json"))
    rules.append(
        {"name": "dashboard", "rules": [{"record": f"d:{k.replace(':', '_')}", "expr": q} for k, q in queries.items()]}
    )
    for group in rules:
        result = promql.check_rules([group])
        if result.returncode != 0:
            problems.append(f"promtool check rules ({group['name']}): {result.stdout}{result.stderr}")
    log.info("%d objects, %d rule groups, %d dashboard queries checked (Kubernetes %s)",
             len(docs), len(rules), len(queries), KUBERNETES_VERSION)  # fmt: skip
    return problems


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    problems = run_checks()
    for problem in problems:
        log.error("%s", problem)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
