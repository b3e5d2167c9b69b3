"""Markdown report of a sweep, generated from its files: summary.json, sweep.json, plots/.

    .venv/bin/python -m perf.report --results perf/results      # part of make bench

Names the hardware and the exported preset, computes the DESIGN.md target ratios
(perf/targets.py) and shows each as met / MISSED / not measured, lists every skipped
or unstable point, and shows where the time of a request goes (perf_analyzer's
per-model breakdown of the ensemble and the ranker's BLS calls).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from perf.plots import CAPACITY_PLOTS, PLOT_NAMES
from perf.targets import evaluate_targets

log = logging.getLogger(__name__)


def _f(x: float | None, digits: int = 2) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def _targets(summary: dict, manifest: dict) -> list[str]:
    rows = [
        [t.name, t.formula, _f(t.value, 3), f"{t.op} {t.threshold:g}", f"**{t.status}**", t.note]
        for t in evaluate_targets(summary, manifest["focus_n"])
    ]
    return ["## Targets", "", *_table(["target", "ratio", "value", "target", "status", "note"], rows), ""]


def _scaling(summary: dict) -> list[str]:
    s = summary["scaling"]
    rows = []
    for i, n in enumerate(s["n"]):
        auto, heavy, base = s["auto_p50_ms"][i], s["heavy_p50_ms"][i], s["baseline_p50_ms"][i]
        ratio = base / auto if base is not None and auto else None
        rows.append([str(n), _f(auto), _f(heavy), _f(base), _f(ratio, 1)])
    header = ["N", "auto p50 (ms)", "heavy p50 (ms)", "baseline p50 (ms)", "baseline / auto"]
    return ["## Latency vs N (perf_analyzer, concurrency 1)", "", *_table(header, rows), ""]


def _routes(summary: dict, manifest: dict) -> list[str]:
    taken = {r: v.get("taken", {}) for r, v in manifest["ndcg"]["routes"].items()}
    rows = [
        [route, _f(e["ndcg10"], 4), _f(e["p50_ms"]), ", ".join(f"{k} {v}" for k, v in taken.get(route, {}).items())]
        for route, e in summary["routes"].items()
    ]
    n, count = manifest["ndcg"]["n"], manifest["ndcg"]["requests"]
    return [
        f"## Routes at N={n}", "",
        f"NDCG@10 of served scores against the world's ground truth over {count} requests; p50 from perf_analyzer.",
        "", *_table(["route", "NDCG@10", "p50 (ms)", "routes taken"], rows), "",
    ]  # fmt: skip


def _overhead_and_throughput(summary: dict, manifest: dict) -> list[str]:
    o, ip = summary["overhead"], manifest["inprocess"]
    lines = [
        "## Serving overhead", "",
        f"Route `{ip['route']}` at N={ip['n']}: served p50 {_f(o['served_p50_ms'])} ms (Triton, gRPC, ensemble, BLS) "
        f"vs in-process {_f(o['inprocess_p50_ms'])} ms (serving/inprocess.py, median of {ip['repeats']} calls, "
        f"{ip['threads']} ONNX Runtime threads).", "",
        f"## Throughput (auto route, N={manifest['focus_n']})", "",
    ]  # fmt: skip
    rows = [[str(p["concurrency"]), _f(p["infer_per_s"], 1), _f(p["p99_ms"]), f"{p['candidates_per_s']:,.0f}"]
            for p in summary["throughput"]]
    return lines + _table(["concurrency", "infer/s", "p99 (ms)", "candidates/s"], rows) + [""]


def _breakdown(manifest: dict) -> list[str]:
    rows = []
    for run in manifest["runs"]:
        if run["n"] != manifest["focus_n"] or not run["composing"].get("1"):
            continue
        for model, parts in sorted(run["composing"]["1"].items()):
            rows.append([run["name"], model, _f(parts.get("latency_ms")), _f(parts.get("queue_ms")),
                         _f(parts.get("compute_infer_ms"))])
    if not rows:
        return []
    header = ["run", "model", "avg latency (ms)", "queue (ms)", "compute infer (ms)"]
    return [f"## Where the time goes (N={manifest['focus_n']}, concurrency 1)", "",
            "perf_analyzer's server-side averages per composing model (the ensemble's steps, and the ranker's "
            "BLS calls where it makes them: not in the CPU profile, whose ranker runs the scorers itself).",
            "", *_table(header, rows), ""]


def _sat_at(entry: dict) -> str:
    at = entry.get("saturation_concurrency")
    return _f(entry["saturation_per_s"], 1) + (f" (c={at})" if at else "")


def _capacity(summary: dict) -> list[str]:
    if "saturation" not in summary:
        return []
    sat, ceiling = summary["saturation"], summary["ceiling"]
    rows = []
    bls = sat.get("batched_bls", {})
    for route in sat["batched"]:
        b, u, via_bls = sat["batched"][route], sat["unbatched"][route], bls.get(route)
        batches = ", ".join(f"{m} {_f(x, 1)}" for m, x in b["mean_batch_size"].items() if x is not None)
        share = b["saturation_per_s"] / ceiling[route] if b["saturation_per_s"] and ceiling.get(route) else None
        rows.append([route, _f(u["p50_c1_ms"]), _f(via_bls["p50_c1_ms"]) if via_bls else "-", _f(b["p50_c1_ms"]),
                     _sat_at(u), _sat_at(via_bls) if via_bls else "-", _sat_at(b),
                     _f(ceiling.get(route), 1), _f(share, 2), batches])
    header = ["route", "unbatched p50 c=1", "batched, BLS scorers p50 c=1", "batched p50 c=1", "unbatched sat./s",
              "batched, BLS scorers sat./s", "batched sat./s", "ceiling /s", "batched / ceiling",
              "mean batch size (batched, whole sweep)"]
    lines = ["## Capacity at N=1024 (perf/capacity.py)", "",
             "Closed loop: p50 at concurrency 1 (ms) and saturation, the highest throughput of the loaded "
             "concurrencies (which one in brackets); the ceiling is the same "
             "ONNX graphs in process, one thread per core.", "", *_table(header, rows), ""]
    rows = []
    for route, entry in summary["open_loop"].items():
        for q in entry["points"]:
            rows.append([route, _f(q["offered_per_s"], 0), _f(q["achieved_per_s"], 1), _f(q["p50_ms"]),
                         _f(q["p99_ms"]), str(q["exit_code"])])
        rows.append([f"**{route}**", "max rate with p99 <= 50 ms:", _f(entry["max_rate_within_p99"], 0), "", "", ""])
    lines += ["### Open loop (perf_analyzer, Poisson)", "",
              *_table(["route", "offered /s", "achieved /s", "p50 (ms)", "p99 (ms)", "exit"], rows), ""]
    rows = [[_f(q["load"], 2), q["route"], _f(q["offered_per_s"], 0), _f(q["achieved_per_s"], 1), _f(q["p50_ms"]),
             _f(q["p99_ms"]), _f(q["miss_rate"], 4), str(q["errors"]), _f(q["ndcg10"], 4),
             ", ".join(f"{k} {v}" for k, v in q["routes_taken"].items())] for q in summary["auto_open_loop"]]
    header = ["x heavy sat.", "route", "offered /s", "achieved /s", "p50", "p99", "misses", "errors", "NDCG@10",
              "routes taken"]
    lines += ["### Under open-loop load, 50 ms budget (perf/open_loop.py)", "", *_table(header, rows), ""]
    return lines


def _gaps(manifest: dict) -> list[str]:
    window = manifest["settings"]["window"]
    lines = [f"- skipped {s['model']} at N={s['n']}: {s['reason']}" for s in manifest["skipped"]]
    lines += [f"- {r['name']}: no stable measurement at concurrency {r['missing']} ({'; '.join(r['attempts'])})"
              for r in manifest["runs"] if r["missing"]]
    retried = [f"{r['name']} ({', '.join(f'c={c} ±{pct}%' for c, pct in r['loose'].items())})"
               for r in manifest["runs"] if r["loose"]]
    if retried:
        lines.append(f"- not stable within ±{window['stability_pct']}% in the first pass, measured on a separate "
                     f"retry with 2x the requests per window at the looser threshold shown: {'; '.join(retried)}")
    return ["## Skipped and unstable points", "", *(lines or ["- none"]), ""]


def render(summary: dict, manifest: dict) -> str:
    settings = manifest["settings"]
    head = [
        "# Adaptive ranking on Triton: perf_analyzer sweep", "",
        f"- hardware: **{summary['hardware']}**",
        f"- models: preset **{manifest['preset']}** (CPU profile, ONNX Runtime in the Python backend)",
        f"- sweep: profile `{manifest['profile']}`, N {settings['ns']}, routes {settings['routes']}, "
        f"concurrency {settings['concurrency']}; took {manifest['wall_s']:.0f} s",
        "- generated by perf/report.py from summary.json and sweep.json; CSVs and perf_analyzer logs in csv/", "",
    ]  # fmt: skip
    names = PLOT_NAMES + (CAPACITY_PLOTS if "open_loop" in summary else ())
    plots = ["## Plots", "", *[f"![{name}](plots/{name})" for name in names], ""]
    body = (_targets(summary, manifest) + _scaling(summary) + _routes(summary, manifest)
            + _overhead_and_throughput(summary, manifest) + _capacity(summary) + _breakdown(manifest)
            + _gaps(manifest) + plots)
    return "\n".join(head + body) + "\n"


def write_report(results: Path) -> Path:
    summary = json.loads((results / "summary.json").read_text())
    manifest = json.loads((results / "sweep.json").read_text())
    path = results / "report.md"
    path.write_text(render(summary, manifest))
    log.info("wrote %s", path)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=Path("perf/results"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    write_report(args.results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
