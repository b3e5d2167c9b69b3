"""The autoscaling signal: the queue time one ensemble request really waits, per request.

    signal = sum over QUEUE models of increase(nv_inference_queue_duration_us)
             / increase(nv_inference_request_success{model=<ensemble>})          (µs per request)

over a window (two scrapes here; ``rate(...[1m])`` in the chart's PrometheusRule). The
ensemble's own queue counter stays near 0 (Triton queues each step, not the ensemble), so
it is left out; the ranker's BLS callees queue like the steps and are counted. Averaging
per-model ratios instead (Triton's k8s-onprem chart, server#8979) under-reports it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from serving.contract import ADAPTIVE_RANKING, SCORER_HEAVY, SCORER_LIGHT

QUEUE_METRIC = "nv_inference_queue_duration_us"
SUCCESS_METRIC = "nv_inference_request_success"
# Called by the ranker through BLS, so absent from the ensemble's steps; they queue all the same.
BLS_CALLEES: tuple[str, ...] = (SCORER_LIGHT.name, SCORER_HEAVY.name)

_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)\{(?P<labels>[^}]*)\}\s+(?P<value>\S+)", re.MULTILINE)
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def queue_models(model_repository: Path, ensemble: str = ADAPTIVE_RANKING.name) -> tuple[str, ...]:
    """Every model a request of ``ensemble`` can wait in: its steps (from its config.pbtxt), then
    the BLS callees."""
    path = Path(model_repository) / ensemble / "config.pbtxt"
    config = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
    steps = tuple(step.model_name for step in config.ensemble_scheduling.step)
    if not steps:
        raise ValueError(f"{path} has no ensemble_scheduling steps")
    return steps + tuple(m for m in BLS_CALLEES if m not in steps)


@dataclass(frozen=True)
class Counters:
    """One scrape's per-model counters (summed over versions)."""

    queue_us: dict[str, float]
    success: dict[str, float]


def parse_counters(text: str) -> Counters:
    """The queue-duration and request-success counters of a Prometheus text scrape of Triton."""
    queue: dict[str, float] = {}
    success: dict[str, float] = {}
    for match in _SAMPLE.finditer(text):
        target = {QUEUE_METRIC: queue, SUCCESS_METRIC: success}.get(match["name"])
        if target is None:
            continue
        model = dict(_LABEL.findall(match["labels"])).get("model")
        if model is None:
            raise ValueError(f"{match['name']} sample without a model label: {match.group(0)!r}")
        target[model] = target.get(model, 0.0) + float(match["value"])
    return Counters(queue, success)


@dataclass(frozen=True)
class QueueSignal:
    queue_us: float  # summed over the queue models, in the window
    requests: float  # the ensemble's successful requests in the window

    @property
    def per_request_us(self) -> float:
        """Queue µs per ensemble request; 0 for a window without requests (an idle replica has
        no queue: the PrometheusRule's clamp_min gives the same)."""
        return self.queue_us / self.requests if self.requests > 0 else 0.0


def queue_signal(
    before: Counters, after: Counters, models: tuple[str, ...], ensemble: str = ADAPTIVE_RANKING.name
) -> QueueSignal:
    """The signal between two scrapes of one server. A counter that went down means the server
    restarted in between: ValueError, as the window then has no meaning."""

    def increase(series: dict[str, float], prev: dict[str, float], model: str) -> float:
        if model not in series:
            raise ValueError(f"the scrape has no {model!r} counters; is it served?")
        delta = series[model] - prev.get(model, 0.0)
        if delta < 0 or not math.isfinite(delta):
            raise ValueError(f"counter of {model!r} went from {prev.get(model)} to {series[model]}: server restarted")
        return delta

    queue = sum(increase(after.queue_us, before.queue_us, m) for m in models)
    return QueueSignal(queue, increase(after.success, before.success, ensemble))
