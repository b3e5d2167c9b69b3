"""helm lint and helm template on the project's chart, offline, writing nothing to $HOME.

helm is the pinned binary that deploy/tools/install-helm.sh puts in build/tools/
(``make deploy-tools``). helm 4's lint has no --api-versions, so the chart gates its
Prometheus-operator objects on values, never on .Capabilities: lint then sees them.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from deploy.checks.manifests import KUBERNETES_VERSION, load_yaml_documents

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "adaptive-ranking"
HELM = ROOT / "build" / "tools" / "helm"


def helm_env() -> dict[str, str]:
    state = ROOT / "build" / "helm"
    return {
        **os.environ,
        "HELM_CACHE_HOME": str(state / "cache"),
        "HELM_CONFIG_HOME": str(state / "config"),
        "HELM_DATA_HOME": str(state / "data"),
    }


def run_helm(*args: str) -> subprocess.CompletedProcess:
    """helm ``args``; the result holds rc, stdout and stderr (a failing lint is a result, not an error)."""
    if not HELM.is_file():
        raise FileNotFoundError(f"{HELM} is missing: run `make deploy-tools`")
    return subprocess.run([str(HELM), *args], capture_output=True, text=True, env=helm_env(), timeout=120)


def set_args(values: dict[str, object]) -> list[str]:
    """``--set-string`` for strings (helm would turn "1" into a number), ``--set`` for the rest."""
    args = []
    for key, value in values.items():
        text = str(value).lower() if isinstance(value, bool) else str(value)
        args += ["--set-string" if isinstance(value, str) else "--set", f"{key}={text}"]
    return args


def lint(values: dict[str, object] | None = None, chart: Path = CHART) -> subprocess.CompletedProcess:
    """``helm lint --strict`` (warnings fail) against KUBERNETES_VERSION."""
    return run_helm("lint", "--strict", "--kube-version", KUBERNETES_VERSION, str(chart), *set_args(values or {}))


def template(values: dict[str, object] | None = None, release: str = "ranking", chart: Path = CHART) -> list[dict]:
    """The rendered objects; RuntimeError with helm's message if it fails."""
    result = run_helm(
        "template",
        release,
        str(chart),
        "--namespace",
        "ranking",
        "--kube-version",
        KUBERNETES_VERSION,
        *set_args(values or {}),
    )
    if result.returncode != 0:
        raise RuntimeError(f"helm template {chart.name} failed: {result.stderr.strip()}")
    return load_yaml_documents(result.stdout)
