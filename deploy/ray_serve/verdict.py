"""What the scale test must show, as a list of failures (empty: passed)."""

from __future__ import annotations


def failures(figures: dict) -> list[str]:
    cfg = figures["config"]
    out = []
    if figures["peak_replicas"] < cfg["max_replicas"]:
        out.append(f"peak replicas {figures['peak_replicas']} < {cfg['max_replicas']} under load")
    if figures["scale_down_to_1_s"] is None:
        out.append(f"not back to 1 replica within {cfg['scale_down_timeout_s']} s of low load")
    for phase, tally in figures["requests"].items():
        if tally["sent"] == 0:
            out.append(f"{phase}: no request sent")
        if tally["errors"] or tally["wrong"]:
            out.append(
                f"{phase}: {tally['errors']} errors, {tally['wrong']} wrong answers; first: {tally['first_error']}"
            )
    if figures["lost"]:
        out.append(f"{figures['lost']} requests lost (sent, never answered)")
    if figures["watchdog_stop_s"] is None:
        out.append(f"a killed replica's tritonserver still ran after {cfg['watchdog_bound_s']} s")
    if figures["servers_left_after_delete"]:
        out.append(f"tritonserver pids left after the app was deleted: {figures['servers_left_after_delete']}")
    return out
