"""PromQL checks with promtool (from Debian's `prometheus` package, ``make deploy-tools``): syntax of
rules and dashboard queries, rule unit tests, and the metric names a query reads."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import yaml

# Grafana's variables, replaced by plausible values so promtool can parse the queries.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "1m", "$namespace": "ranking"}
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"')
_BRACES = re.compile(r"\{[^}]*\}")
_RANGES = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_OFFSETS = re.compile(r"\boffset\s+\S+")
_NUMBERS = re.compile(r"(?<![a-zA-Z0-9_:])\d+(?:\.\d*)?(?:[eE][-+]?\d+)?")
_IDENT = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool", "offset"}


PROMTOOL = Path(__file__).resolve().parents[2] / "build" / "tools" / "promtool"


def promtool() -> str:
    """deploy/tools/install-promtool.sh's binary, else one on PATH."""
    path = str(PROMTOOL) if PROMTOOL.is_file() else shutil.which("promtool")
    if path is None:
        raise FileNotFoundError(f"{PROMTOOL} is missing: run `make deploy-tools` (from Debian's prometheus package)")
    return path


def metric_names(expr: str) -> set[str]:
    """The metric (or recorded series) names an expression selects. Strings, grouping clauses,
    offsets, label matchers, ranges and numbers are removed first; an identifier followed by
    "(" is a function or aggregation."""
    text = _STRINGS.sub('""', expr)
    text = _BRACES.sub(" ", _RANGES.sub(" ", _GROUPING.sub(" ", _OFFSETS.sub(" ", text))))
    text = _NUMBERS.sub(" ", text)
    names = set()
    for match in _IDENT.finditer(text):
        following = text[match.end() :].lstrip()
        if match[0] not in _KEYWORDS and not following.startswith("("):
            names.add(match[0])
    return names


def dashboard_queries(dashboard: dict) -> dict[str, str]:
    """``panel<id>:<refId>`` -> the query with Grafana's variables substituted."""
    queries = {}
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            if "$" in expr:
                raise ValueError(f"panel {panel['id']} ({panel['title']}) uses an unknown variable: {expr}")
            queries[f"panel{panel['id']}:{target['refId']}"] = expr
    return queries


def load_dashboard(path: Path) -> dict:
    dashboard = json.loads(path.read_text())
    ids = [p["id"] for p in dashboard["panels"]]
    if len(ids) != len(set(ids)):
        raise ValueError(f"{path}: duplicate panel ids {sorted(i for i in ids if ids.count(i) > 1)}")
    return dashboard


def check_rules(groups: list[dict]) -> subprocess.CompletedProcess:
    """``promtool check rules`` on rule groups (PrometheusRule ``spec.groups``)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rules.yaml"
        path.write_text(yaml.safe_dump({"groups": groups}))
        return subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True, text=True, timeout=60)


def test_rules(groups: list[dict], tests: list[dict], evaluation_interval: str = "15s") -> subprocess.CompletedProcess:
    """``promtool test rules``: ``tests`` (promtool's unit-test format) against the rule groups."""
    with tempfile.TemporaryDirectory() as tmp:
        rules = Path(tmp) / "rules.yaml"
        rules.write_text(yaml.safe_dump({"groups": groups}))
        spec = Path(tmp) / "test.yaml"
        spec.write_text(
            yaml.safe_dump({"rule_files": [rules.name], "evaluation_interval": evaluation_interval, "tests": tests})
        )
        return subprocess.run(
            [promtool(), "test", "rules", str(spec)], capture_output=True, text=True, timeout=60, cwd=tmp
        )


test_rules.__test__ = False  # not a pytest test, despite the name
