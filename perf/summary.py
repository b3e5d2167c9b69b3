"""Write ``summary.json`` from a sweep's files: its manifest ``sweep.json`` and the perf_analyzer CSVs.

    .venv/bin/python -m perf.summary --results perf/results     # part of make bench

The schema is fixed (plots, the report and other tools read it)::

    {"hardware": str,
     "scaling": {"n": [...], "auto_p50_ms": [...], "heavy_p50_ms": [...], "baseline_p50_ms": [...]},
     "routes": {route: {"ndcg10": x, "p50_ms": y}},
     "overhead": {"served_p50_ms": x, "inprocess_p50_ms": y},
     "throughput": [{"concurrency": c, "infer_per_s": x, "p99_ms": y, "candidates_per_s": z}]}

and, when perf/capacity.py ran (``capacity.json``), also::

     "ceiling": {route: requests/s in process},
     "saturation": {"batched"|"unbatched"|"batched_bls": {route: {"p50_c1_ms", "saturation_per_s", "saturation_p99_ms",
                                                    "saturation_concurrency", "mean_batch_size": {model: x}}}},
     "open_loop": {route: {"points": [{"offered_per_s", "achieved_per_s", "p50_ms", "p99_ms", "exit_code"}],
                           "max_rate_within_p99": x}},
     "auto_open_loop": [{"load", "route", "offered_per_s", "achieved_per_s", "p50_ms", "p99_ms",
                         "miss_rate", "errors", "routes_taken", "ndcg10"}]

Latencies are perf_analyzer's client p50 at concurrency 1; a point that was skipped or
never measured stably is null (sweep.json says which and why). ``routes`` and
``overhead`` are at the sweep's focus N (1024 in the full profile), ``overhead`` on the
route the in-process composition ran; ``throughput`` is the auto route at the focus N
over the concurrency levels, candidates/s = inferences/s x N.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from perf.parse import PerfRow, parse_csv, row_at

log = logging.getLogger(__name__)

SCHEMA_KEYS = ("hardware", "scaling", "routes", "overhead", "throughput")
CAPACITY_KEYS = ("ceiling", "saturation", "open_loop", "auto_open_loop")
SCALING_KEYS = ("n", "auto_p50_ms", "heavy_p50_ms", "baseline_p50_ms")
THROUGHPUT_ROUTE = "auto"


def load_rows(results: Path, manifest: dict) -> dict[str, list[PerfRow]]:
    """Rows of every run in the manifest (first CSV plus its retries), by run name."""
    rows = {}
    for run in manifest["runs"]:
        merged = [row for csv in run["csv"] for row in parse_csv(results / csv)]
        rows[run["name"]] = sorted(merged, key=lambda r: r.concurrency)
    return rows


def _p50(rows: dict[str, list[PerfRow]], name: str, concurrency: int = 1) -> float | None:
    row = row_at(rows.get(name, []), concurrency)
    return None if row is None else round(row.p50_ms, 4)


def build_summary(manifest: dict, rows: dict[str, list[PerfRow]]) -> dict:
    ns = list(manifest["settings"]["ns"])
    focus = manifest["focus_n"]
    ndcg = manifest["ndcg"]["routes"]
    inprocess = manifest["inprocess"]
    throughput = [
        {
            "concurrency": r.concurrency,
            "infer_per_s": round(r.infer_per_s, 4),
            "p99_ms": round(r.p99_ms, 4),
            "candidates_per_s": round(r.infer_per_s * focus, 2),
        }
        for r in rows.get(f"{THROUGHPUT_ROUTE}-n{focus}", [])
    ]
    return {
        "hardware": manifest["hardware"],
        "scaling": {
            "n": ns,
            "auto_p50_ms": [_p50(rows, f"auto-n{n}") for n in ns],
            "heavy_p50_ms": [_p50(rows, f"heavy-n{n}") for n in ns],
            "baseline_p50_ms": [_p50(rows, f"baseline-n{n}") for n in ns],
        },
        "routes": {
            route: {"ndcg10": round(ndcg[route]["ndcg10"], 6), "p50_ms": _p50(rows, f"{route}-n{focus}")}
            for route in manifest["settings"]["routes"]
        },
        "overhead": {
            "served_p50_ms": _p50(rows, f"{inprocess['route']}-n{inprocess['n']}"),
            "inprocess_p50_ms": round(inprocess["p50_ms"], 4),
        },
        "throughput": throughput,
    }


SATURATION_VARIANTS = ("batched", "unbatched", "batched_bls")


def capacity_summary(capacity: dict) -> dict:
    """The summary keys of a perf/capacity.py run (its ``capacity.json``)."""

    def sat(entry: dict) -> dict:
        return {
            "p50_c1_ms": entry["p50_c1_ms"],
            "saturation_per_s": entry["saturation_per_s"],
            "saturation_p99_ms": entry["saturation_p99_ms"],
            "saturation_concurrency": entry.get("saturation_concurrency"),
            "mean_batch_size": {m: b["mean_batch_size"] for m, b in entry["batches"].items()},
        }

    point_keys = ("offered_per_s", "achieved_per_s", "p50_ms", "p99_ms", "exit_code")
    auto_keys = ("load", "route", "offered_per_s", "achieved_per_s", "p50_ms", "p99_ms", "miss_rate", "errors",
                 "routes_taken", "ndcg10")  # fmt: skip
    return {
        "ceiling": {route: c["requests_per_s"] for route, c in capacity["ceiling"].items()},
        "saturation": {
            variant: {route: sat(e) for route, e in capacity[variant].items()}
            for variant in SATURATION_VARIANTS
            if variant in capacity  # batched_bls: runs from before it was measured have none
        },
        "open_loop": {
            route: {
                "points": [{k: q.get(k) for k in point_keys} for q in entry["points"]],
                "max_rate_within_p99": entry["max_rate_within_p99"],
            }
            for route, entry in capacity["open_loop"].items()
        },
        "auto_open_loop": [{k: q.get(k) for k in auto_keys} for q in capacity["auto_open_loop"]],
    }


def check_schema(summary: dict) -> None:
    """ValueError naming the first part of ``summary`` that breaks the fixed schema (new keys may follow)."""
    if tuple(summary)[: len(SCHEMA_KEYS)] != SCHEMA_KEYS or not set(summary) <= {*SCHEMA_KEYS, *CAPACITY_KEYS}:
        raise ValueError(f"summary keys must be {SCHEMA_KEYS} then some of {CAPACITY_KEYS}, got {tuple(summary)}")
    if not isinstance(summary["hardware"], str):
        raise ValueError(f"hardware must be a string, got {summary['hardware']!r}")
    scaling = summary["scaling"]
    if tuple(scaling) != SCALING_KEYS or len({len(v) for v in scaling.values()}) != 1:
        lengths = {k: len(v) for k, v in scaling.items()}
        raise ValueError(f"scaling must hold equally long lists {SCALING_KEYS}, got lengths {lengths}")
    for route, entry in summary["routes"].items():
        if set(entry) != {"ndcg10", "p50_ms"}:
            raise ValueError(f"routes.{route} must have ndcg10 and p50_ms, got {sorted(entry)}")
    if set(summary["overhead"]) != {"served_p50_ms", "inprocess_p50_ms"}:
        raise ValueError(f"overhead must have served_p50_ms and inprocess_p50_ms, got {sorted(summary['overhead'])}")
    for point in summary["throughput"]:
        if set(point) != {"concurrency", "infer_per_s", "p99_ms", "candidates_per_s"}:
            raise ValueError(f"throughput points need concurrency, infer_per_s, p99_ms, candidates_per_s, got {point}")


def write_summary(results: Path) -> dict:
    manifest = json.loads((results / "sweep.json").read_text())
    summary = build_summary(manifest, load_rows(results, manifest))
    if (results / "capacity.json").is_file():
        summary.update(capacity_summary(json.loads((results / "capacity.json").read_text())))
    check_schema(summary)
    (results / "summary.json").write_text(json.dumps(summary, indent=2))
    log.info("wrote %s", results / "summary.json")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=Path("perf/results"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    write_summary(args.results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
