"""PNG plots drawn from ``summary.json`` alone (nothing is measured here).

    .venv/bin/python -m perf.plots --results perf/results     # part of make bench

Writes into ``<results>/plots/``:
  latency_vs_n.png       served p50 vs candidates N, auto and heavy routes vs the
                         per-candidate baseline, log-log axes (null points left out)
  throughput_vs_p99.png  auto route at the focus N: inferences/s (right axis: candidates/s)
                         vs p99 latency, one point per concurrency level
  ndcg_vs_latency.png    NDCG@10 vs p50 latency, one point per route
and, when perf/capacity.py ran:
  p99_vs_offered_load.png  open loop (Poisson): p99 vs offered requests/s per route
  auto_under_load.png      auto with its budget under open-loop load: NDCG@10 and the routes taken
                           vs offered load, fixed routes' NDCG@10 beside it
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

log = logging.getLogger(__name__)

PLOT_NAMES = ("latency_vs_n.png", "throughput_vs_p99.png", "ndcg_vs_latency.png")
CAPACITY_PLOTS = ("p99_vs_offered_load.png", "auto_under_load.png")
SERIES = (("auto_p50_ms", "ours: auto route", "o-"), ("heavy_p50_ms", "ours: heavy route", "s-"),
          ("baseline_p50_ms", "per-candidate baseline", "^--"))


def _points(xs: list, ys: list) -> tuple[list, list]:
    kept = [(x, y) for x, y in zip(xs, ys) if y is not None]
    return [x for x, _ in kept], [y for _, y in kept]


def plot_latency_vs_n(summary: dict, path: Path) -> None:
    scaling = summary["scaling"]
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for key, label, style in SERIES:
        xs, ys = _points(scaling["n"], scaling[key])
        if xs:
            ax.plot(xs, ys, style, label=label)
    skipped = [n for n, y in zip(scaling["n"], scaling["baseline_p50_ms"]) if y is None]
    if skipped:
        ax.text(0.02, 0.02, f"baseline not measured at N = {', '.join(map(str, skipped))}",
                transform=ax.transAxes, fontsize=8)
    ax.set(xscale="log", yscale="log", xlabel="candidates per request N", ylabel="p50 latency (ms)",
           title="Served p50 latency vs N (concurrency 1)")
    ax.set_xticks(scaling["n"], [str(n) for n in scaling["n"]])
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    _save(fig, path, summary)


def plot_throughput(summary: dict, path: Path) -> None:
    points = summary["throughput"]
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    p99 = [p["p99_ms"] for p in points]
    ax.plot(p99, [p["infer_per_s"] for p in points], "o-", label="inferences/s")
    for p in points:
        ax.annotate(f"c={p['concurrency']}", (p["p99_ms"], p["infer_per_s"]), textcoords="offset points",
                    xytext=(4, 4), fontsize=8)
    ax.set(xlabel="p99 latency (ms)", ylabel="inferences / s", title="Throughput vs p99 (auto route)")
    ax.grid(True, alpha=0.3)
    if points and points[0]["infer_per_s"] > 0:
        n = points[0]["candidates_per_s"] / points[0]["infer_per_s"]  # candidates per request
        right = ax.secondary_yaxis("right", functions=(lambda x: x * n, lambda y: y / n))
        right.set_ylabel(f"candidates / s (N = {n:.0f})")
    _save(fig, path, summary)


def plot_ndcg_vs_latency(summary: dict, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    markers = iter("osD^vP*X")
    for route, entry in summary["routes"].items():
        if entry["p50_ms"] is not None:
            ax.plot(entry["p50_ms"], entry["ndcg10"], next(markers), markersize=8, alpha=0.8, label=route)
    ax.legend(title="route")
    ax.set(xlabel="p50 latency (ms)", ylabel="NDCG@10", title="Ranking quality vs latency per route")
    ax.grid(True, alpha=0.3)
    _save(fig, path, summary)


def plot_p99_vs_offered(summary: dict, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for route, entry in summary["open_loop"].items():
        xs, ys = _points([q["offered_per_s"] for q in entry["points"]], [q["p99_ms"] for q in entry["points"]])
        if xs:
            ax.plot(xs, ys, "o-", label=route)
    ax.axhline(50.0, color="gray", linestyle=":", label="50 ms")
    ax.set(yscale="log", xlabel="offered load (requests/s, Poisson)", ylabel="p99 latency (ms)",
           title="Open loop: p99 vs offered load (N=1024)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    _save(fig, path, summary)


def plot_auto_under_load(summary: dict, path: Path) -> None:
    points = summary["auto_open_loop"]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(6.4, 6.4), sharex=True)
    for route in dict.fromkeys(q["route"] for q in points):
        xs, ys = _points([q["offered_per_s"] for q in points if q["route"] == route],
                         [q["ndcg10"] for q in points if q["route"] == route])
        top.plot(xs, ys, "o-" if route == "auto" else ".--", label=route)
    top.set(ylabel="NDCG@10", title="Under open-loop load with a 50 ms budget")
    top.grid(True, alpha=0.3)
    top.legend(fontsize=8)
    auto = [q for q in points if q["route"] == "auto"]
    xs = [q["offered_per_s"] for q in auto]
    bottom_base = [0.0] * len(auto)
    for taken in ("heavy", "cascade", "light"):
        share = [q["routes_taken"].get(taken, 0) / max(sum(q["routes_taken"].values()), 1) for q in auto]
        bottom.bar(xs, share, bottom=bottom_base, width=max(xs) * 0.05 if xs else 1.0, label=taken)
        bottom_base = [b + v for b, v in zip(bottom_base, share)]
    bottom.set(xlabel="offered load (requests/s, Poisson)", ylabel="auto: share of routes taken")
    bottom.legend(fontsize=8)
    _save(fig, path, summary)


def _save(fig: plt.Figure, path: Path, summary: dict) -> None:
    fig.text(0.99, 0.005, summary["hardware"], ha="right", va="bottom", fontsize=7, color="gray")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    log.info("wrote %s", path)


def write_plots(results: Path) -> list[Path]:
    summary = json.loads((results / "summary.json").read_text())
    out = results / "plots"
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / name for name in PLOT_NAMES]
    for draw, path in zip((plot_latency_vs_n, plot_throughput, plot_ndcg_vs_latency), paths):
        draw(summary, path)
    if "open_loop" in summary:
        for draw, name in zip((plot_p99_vs_offered, plot_auto_under_load), CAPACITY_PLOTS):
            draw(summary, out / name)
            paths.append(out / name)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=Path("perf/results"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    write_plots(args.results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
