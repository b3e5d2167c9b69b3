"""Autoscaling on the queue time per ensemble request that every replica reads from its own
Triton server (deploy/queue_signal.py), like the HPA does on Kubernetes.

    desired = ceil(current * mean_queue_us / target_queue_us)

with the HPA's tolerance: within ±tolerance of the target nothing changes, so a load that
sits near the target does not flap. Replicas still starting have no reading yet; as the HPA
does with pods that are not ready, they count as idle when scaling up and as at the target
when scaling down, so a scale-up in progress is never undone by the readings of the replicas
that carry the load alone until the new ones run. Serve then applies min/max replicas and
the upscale/downscale delays.
"""

from __future__ import annotations

import math

QUEUE_METRIC = "queue_us_per_request"  # the key a replica's record_autoscaling_stats reports


def desired_replicas(
    current: int, mean_queue_us: float, target_queue_us: float, tolerance: float = 0.1, starting: int = 0
) -> int:
    """Replicas that bring the mean queue time per request to the target (unbounded: Serve
    clamps). ``current`` replicas report ``mean_queue_us``; ``starting`` more have no reading."""
    if target_queue_us <= 0 or not math.isfinite(target_queue_us):
        raise ValueError(f"target_queue_us must be finite and > 0, got {target_queue_us!r}")
    if current < 1 or starting < 0 or not math.isfinite(mean_queue_us) or mean_queue_us < 0:
        raise ValueError(
            f"need current >= 1, starting >= 0 and a finite mean >= 0, "
            f"got current={current}, starting={starting}, mean={mean_queue_us!r}"
        )
    total = current + starting
    load = current * mean_queue_us / target_queue_us  # replicas' worth of queue, starting ones idle
    if abs(load / total - 1.0) <= tolerance:
        return total
    if load > total:  # scale up: the starting replicas take nothing yet
        return math.ceil(load)
    # Scale down: the starting replicas count as at the target, so they are kept while the
    # running ones are busy; the HPA gives pods without metrics the same benefit of the doubt.
    return max(1, min(total, math.ceil(load + starting)))


class QueueTimePolicy:
    """Serve's custom policy: ``policy: {policy_function: deploy.ray_serve.policy:QueueTimePolicy,
    policy_kwargs: {target_queue_us: ..., tolerance: ...}}``. Serve builds it once with the kwargs
    and calls it with an AutoscalingContext every control-loop tick."""

    def __init__(self, target_queue_us: float, tolerance: float = 0.1) -> None:
        desired_replicas(1, 0.0, target_queue_us, tolerance)  # validates the kwargs at deploy time
        self.target_queue_us = float(target_queue_us)
        self.tolerance = float(tolerance)

    def __call__(self, ctx: object) -> tuple[int, dict]:
        # current_num_replicas counts the running replicas; target_num_replicas what Serve is
        # heading for, so the difference is the replicas still starting.
        per_replica = (ctx.aggregated_metrics or {}).get(QUEUE_METRIC, {})
        if ctx.current_num_replicas == 0 or not per_replica:
            return ctx.target_num_replicas, ctx.policy_state  # no readings yet: keep what was decided
        mean = sum(per_replica.values()) / len(per_replica)
        starting = max(0, ctx.target_num_replicas - ctx.current_num_replicas)
        desired = desired_replicas(ctx.current_num_replicas, mean, self.target_queue_us, self.tolerance, starting)
        bounded = max(ctx.capacity_adjusted_min_replicas, min(ctx.capacity_adjusted_max_replicas, desired))
        return bounded, {"mean_queue_us": mean, "starting": starting, "desired": desired}
