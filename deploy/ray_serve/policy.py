"""Autoscaling on the queue time per ensemble request that every replica reads from its own
Triton server (deploy/queue_signal.py), like the HPA does on Kubernetes.

    desired = ceil(current * mean_queue_us / target_queue_us)

with the HPA's tolerance: within ±tolerance of the target nothing changes, so a load that
sits near the target does not flap. Serve then applies min/max replicas and the
upscale/downscale delays.
"""

from __future__ import annotations

import math

QUEUE_METRIC = "queue_us_per_request"  # the key a replica's record_autoscaling_stats reports


def desired_replicas(current: int, mean_queue_us: float, target_queue_us: float, tolerance: float = 0.1) -> int:
    """Replicas that bring the mean queue time per request to the target (unbounded: Serve clamps)."""
    if target_queue_us <= 0 or not math.isfinite(target_queue_us):
        raise ValueError(f"target_queue_us must be finite and > 0, got {target_queue_us!r}")
    if current < 1 or not math.isfinite(mean_queue_us) or mean_queue_us < 0:
        raise ValueError(f"need current >= 1 and a finite mean >= 0, got current={current}, mean={mean_queue_us!r}")
    ratio = mean_queue_us / target_queue_us
    if abs(ratio - 1.0) <= tolerance:
        return current
    return max(1, math.ceil(current * ratio))


class QueueTimePolicy:
    """Serve's custom policy: ``policy: {policy_function: deploy.ray_serve.policy:QueueTimePolicy,
    policy_kwargs: {target_queue_us: ..., tolerance: ...}}``. Serve builds it once with the kwargs
    and calls it with an AutoscalingContext every control-loop tick."""

    def __init__(self, target_queue_us: float, tolerance: float = 0.1) -> None:
        desired_replicas(1, 0.0, target_queue_us, tolerance)  # validates the kwargs at deploy time
        self.target_queue_us = float(target_queue_us)
        self.tolerance = float(tolerance)

    def __call__(self, ctx: object) -> tuple[int, dict]:
        per_replica = (ctx.aggregated_metrics or {}).get(QUEUE_METRIC, {})
        if ctx.current_num_replicas == 0 or not per_replica:
            return ctx.target_num_replicas, ctx.policy_state  # no readings yet: keep what was decided
        mean = sum(per_replica.values()) / len(per_replica)
        desired = desired_replicas(ctx.current_num_replicas, mean, self.target_queue_us, self.tolerance)
        bounded = max(ctx.capacity_adjusted_min_replicas, min(ctx.capacity_adjusted_max_replicas, desired))
        return bounded, {"mean_queue_us": mean, "desired": desired}
