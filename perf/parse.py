"""Parse what perf_analyzer writes: its ``-f`` CSV and the per-model breakdown of its output.

    rows = parse_csv(Path("perf/results/csv/auto-n1024.csv"))   # [PerfRow], by concurrency
    python -m perf.parse perf/results/csv/auto-n1024.csv        # print the rows as JSON

The CSV has one row per concurrency level, sorted by throughput (not concurrency), with
latencies in microseconds; ``--verbose-csv`` and ``--collect-metrics`` append columns,
which are ignored here. Rows come back in milliseconds, sorted by concurrency.
``parse_composing`` reads the "Composing models" section that perf_analyzer prints for
ensembles (and for BLS models named with ``--bls-composing-models``).
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

# Column of the CSV -> PerfRow field (values in usec become ms).
LATENCY_COLUMNS = {
    "p50 latency": "p50_ms",
    "p90 latency": "p90_ms",
    "p95 latency": "p95_ms",
    "p99 latency": "p99_ms",
}
COMPONENT_COLUMNS = {
    "Client Send": "client_send_ms",
    "Network+Server Send/Recv": "network_ms",
    "Server Queue": "server_queue_ms",
    "Server Compute Input": "compute_input_ms",
    "Server Compute Infer": "compute_infer_ms",
    "Server Compute Output": "compute_output_ms",
    "Client Recv": "client_recv_ms",
}
REQUIRED = ("Concurrency", "Inferences/Second", *LATENCY_COLUMNS)


@dataclass(frozen=True)
class PerfRow:
    """One concurrency level of one perf_analyzer run; latencies in ms."""

    concurrency: int
    infer_per_s: float
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    client_send_ms: float = 0.0
    network_ms: float = 0.0
    server_queue_ms: float = 0.0
    compute_input_ms: float = 0.0
    compute_infer_ms: float = 0.0
    compute_output_ms: float = 0.0
    client_recv_ms: float = 0.0


def parse_csv_text(text: str, source: str = "<csv>") -> list[PerfRow]:
    """Rows of one perf_analyzer CSV; ValueError naming ``source`` if a required column is missing."""
    reader = csv.DictReader(line for line in text.splitlines() if line.strip())
    header = reader.fieldnames or []
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise ValueError(f"{source}: not a perf_analyzer concurrency CSV, missing columns {missing} (header {header})")
    rows = []
    for line_no, record in enumerate(reader, start=2):
        try:
            values = {
                "concurrency": int(record["Concurrency"]),
                "infer_per_s": float(record["Inferences/Second"]),
                **{field: float(record[col]) / 1e3 for col, field in LATENCY_COLUMNS.items()},
                **{field: float(record[col]) / 1e3 for col, field in COMPONENT_COLUMNS.items() if record.get(col)},
            }
        except (TypeError, ValueError) as e:
            raise ValueError(f"{source} line {line_no}: bad value ({e}) in {record}") from None
        rows.append(PerfRow(**values))
    return sorted(rows, key=lambda r: r.concurrency)


def parse_csv(path: Path) -> list[PerfRow]:
    return parse_csv_text(Path(path).read_text(), str(path))


@dataclass(frozen=True)
class RateRow:
    """One offered request rate of a perf_analyzer ``--request-rate-range`` run; latencies in ms."""

    offered_per_s: float
    infer_per_s: float  # achieved
    p50_ms: float
    p99_ms: float


def parse_rate_csv_text(text: str, source: str = "<csv>") -> list[RateRow]:
    """Rows of a request-rate CSV (column "Request Rate" instead of "Concurrency"), by offered rate."""
    reader = csv.DictReader(line for line in text.splitlines() if line.strip() and not line.startswith("Request Rate,"))
    reader.fieldnames = next(csv.reader([_rate_header(text, source)]))
    rows = []
    for line_no, record in enumerate(reader, start=2):
        try:
            rows.append(
                RateRow(
                    float(record["Request Rate"]),
                    float(record["Inferences/Second"]),
                    float(record["p50 latency"]) / 1e3,
                    float(record["p99 latency"]) / 1e3,
                )
            )
        except (TypeError, ValueError, KeyError) as e:
            raise ValueError(f"{source} line {line_no}: bad value ({e}) in {record}") from None
    return sorted(rows, key=lambda r: r.offered_per_s)


def _rate_header(text: str, source: str) -> str:
    header = next((line for line in text.splitlines() if line.startswith("Request Rate,")), None)
    if header is None or "p99 latency" not in header:
        raise ValueError(f"{source}: not a perf_analyzer request-rate CSV (no 'Request Rate,...' header)")
    return header


def parse_rate_csv(path: Path) -> list[RateRow]:
    return parse_rate_csv_text(Path(path).read_text(), str(path))


def row_at(rows: list[PerfRow], concurrency: int) -> PerfRow | None:
    """The row of ``concurrency``, None if that level was not measured (e.g. unstable)."""
    return next((r for r in rows if r.concurrency == concurrency), None)


_CONCURRENCY = re.compile(r"^Request concurrency: (\d+)", re.M)
_MODEL = re.compile(r"^\s+(\S+), version: \S+\s*$")
_LATENCY = re.compile(r"Avg request latency: (\d+) usec \((.*)\)")
_PART = re.compile(r"([a-z ]+?) (\d+) usec")


def parse_composing(stdout: str) -> dict[int, dict[str, dict[str, float]]]:
    """Per concurrency level, each composing model's average latency parts in ms.

    ``{1: {"ranker": {"latency_ms": 5.1, "queue_ms": 1.5, "compute_infer_ms": 3.2, ...}}}``;
    empty when perf_analyzer printed no composing models.
    """
    result: dict[int, dict[str, dict[str, float]]] = {}
    blocks = _CONCURRENCY.split(stdout)
    for level, block in zip(blocks[1::2], blocks[2::2]):
        if "Composing models:" not in block:
            continue
        models: dict[str, dict[str, float]] = {}
        current = None
        for line in block.split("Composing models:", 1)[1].splitlines():
            if m := _MODEL.match(line):
                current = m.group(1)
            elif current and (m := _LATENCY.search(line)):
                parts = {f"{name.strip().replace(' ', '_')}_ms": int(v) / 1e3 for name, v in _PART.findall(m.group(2))}
                models[current] = {"latency_ms": int(m.group(1)) / 1e3, **parts}
        result[int(level)] = models
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("csv", type=Path, nargs="+")
    args = parser.parse_args(argv)
    out = {str(p): [asdict(r) for r in parse_csv(p)] for p in args.csv}
    sys.stdout.write(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
