"""The performance targets of DESIGN.md as ratios computed from ``summary.json``.

    targets = evaluate_targets(summary, route_n=1024)
    .venv/bin/python -m perf.targets --results perf/results    # prints them; exit 1 if one is missed

Each target is met, missed, or not measured (a needed point is null or absent, e.g. a
skipped baseline or a sweep without N=1024); nothing is rounded into a pass.
  scaling vs baseline   baseline p50 / auto p50 at N=1024              >= 50
  sub-linear in N       auto p50(N=4096) / auto p50(N=64)              <= 6
  cascade quality       cascade NDCG@10 / heavy NDCG@10 (route N)     >= 0.99
  cascade latency       cascade p50 / heavy p50 (route N)             <= 0.35
  serving overhead      served p50 / in-process p50 (route N)         <= 1.5
and, with perf/capacity.py's figures (N=1024, closed-loop saturation: the highest throughput at concurrency 16 or 64):
  batching gain         heavy saturation, batched / unbatched          >= 3
  share of the ceiling  heavy saturation / in-process ceiling          >= 0.5
  light throughput      light / heavy saturation                       >= 2.5
  cascade throughput    cascade / heavy saturation                     >= 1.8
  idle latency          batched / unbatched p50 at concurrency 1       <= 1.1 (worst route)
  auto under load       at 1.5x heavy's saturation, 50 ms budget: p99 <= 50 ms, misses <= 1%, 0 errors
``routes`` and ``overhead`` in summary.json are at the sweep's focus N; pass it as
``route_n`` so targets defined at N=1024 are not claimed from another N.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

TARGET_N = 1024
MET, MISSED, NOT_MEASURED = "met", "MISSED", "not measured"


@dataclass(frozen=True)
class Target:
    name: str
    formula: str
    value: float | None
    op: str  # ">=" or "<="
    threshold: float
    note: str = ""

    @property
    def status(self) -> str:
        if self.value is None:
            return NOT_MEASURED
        ok = self.value >= self.threshold if self.op == ">=" else self.value <= self.threshold
        return MET if ok else MISSED


def _ratio(num: float | None, den: float | None) -> float | None:
    if num is None or den is None or den <= 0:
        return None
    return num / den


def _at(scaling: dict, key: str, n: int) -> float | None:
    return scaling[key][scaling["n"].index(n)] if n in scaling["n"] else None


def _sat(summary: dict, variant: str, route: str, key: str = "saturation_per_s") -> float | None:
    return summary.get("saturation", {}).get(variant, {}).get(route, {}).get(key)


def capacity_targets(summary: dict) -> list[Target]:
    """The batching targets; empty when perf/capacity.py did not run."""
    if "saturation" not in summary:
        return []
    heavy = _sat(summary, "batched", "heavy")
    idle = [
        _ratio(_sat(summary, "batched", r, "p50_c1_ms"), _sat(summary, "unbatched", r, "p50_c1_ms"))
        for r in summary["saturation"]["batched"]
    ]
    worst_idle = None if not idle or None in idle else max(idle)
    auto = [q for q in summary.get("auto_open_loop", []) if q["route"] == "auto" and q["load"] == 1.5]
    auto = auto[0] if auto else {}
    return [
        Target("batching gain", "heavy saturation throughput, batched / unbatched",
               _ratio(heavy, _sat(summary, "unbatched", "heavy")), ">=", 3.0),
        Target("share of the compute ceiling", "heavy saturation / in-process ceiling (heavy)",
               _ratio(heavy, summary.get("ceiling", {}).get("heavy")), ">=", 0.5),
        Target("light throughput", "light / heavy saturation throughput",
               _ratio(_sat(summary, "batched", "light"), heavy), ">=", 2.5),
        Target("cascade throughput", "cascade / heavy saturation throughput",
               _ratio(_sat(summary, "batched", "cascade"), heavy), ">=", 1.8),
        Target("idle latency", "batched / unbatched p50 at concurrency 1 (worst route)", worst_idle, "<=", 1.1),
        Target("auto p99 under load", "auto p99 (ms) at 1.5x heavy saturation, 50 ms budget",
               auto.get("p99_ms"), "<=", 50.0),
        Target("auto budget misses", "share over budget or failed at 1.5x heavy saturation",
               auto.get("miss_rate"), "<=", 0.01),
        Target("auto errors", "errors at 1.5x heavy saturation", auto.get("errors"), "<=", 0.0),
    ]  # fmt: skip


def evaluate_targets(summary: dict, route_n: int = TARGET_N) -> list[Target]:
    scaling, routes, overhead = summary["scaling"], summary["routes"], summary["overhead"]
    at_target = route_n == TARGET_N
    off = "" if at_target else f"routes/overhead measured at N={route_n}, not {TARGET_N}"

    def route(name: str, key: str) -> float | None:
        return routes.get(name, {}).get(key) if at_target else None

    return [
        Target(
            "scaling vs per-candidate baseline",
            f"baseline p50 / auto p50 at N={TARGET_N}",
            _ratio(_at(scaling, "baseline_p50_ms", TARGET_N), _at(scaling, "auto_p50_ms", TARGET_N)),
            ">=", 50.0,
        ),
        Target(
            "sub-linear cost in N",
            "auto p50(N=4096) / auto p50(N=64)",
            _ratio(_at(scaling, "auto_p50_ms", 4096), _at(scaling, "auto_p50_ms", 64)),
            "<=", 6.0,
        ),
        Target(
            "cascade quality",
            f"cascade NDCG@10 / heavy NDCG@10 at N={TARGET_N}",
            _ratio(route("cascade", "ndcg10"), route("heavy", "ndcg10")),
            ">=", 0.99, off,
        ),
        Target(
            "cascade latency",
            f"cascade p50 / heavy p50 at N={TARGET_N}",
            _ratio(route("cascade", "p50_ms"), route("heavy", "p50_ms")),
            "<=", 0.35, off,
        ),
        Target(
            "serving overhead",
            f"served p50 / in-process p50 at N={TARGET_N}",
            _ratio(overhead["served_p50_ms"], overhead["inprocess_p50_ms"]) if at_target else None,
            "<=", 1.5, off,
        ),
        *capacity_targets(summary),
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=Path("perf/results"))
    args = parser.parse_args(argv)
    summary = json.loads((args.results / "summary.json").read_text())
    manifest = json.loads((args.results / "sweep.json").read_text())
    targets = evaluate_targets(summary, manifest["focus_n"])
    for t in targets:
        value = "n/a" if t.value is None else f"{t.value:.3f}"
        sys.stdout.write(f"{t.status:>12}  {t.name}: {t.formula} = {value} (target {t.op} {t.threshold:g}) {t.note}\n")
    return 1 if any(t.status == MISSED for t in targets) else 0


if __name__ == "__main__":
    raise SystemExit(main())
