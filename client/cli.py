"""Send ranking requests to Triton's ``adaptive_ranking`` ensemble from the command line.

    python -m client --request request.json --url 127.0.0.1:8001 --route cascade --top-k 10
    python -m client --world-preset small --seed 3 --candidates 512 --protocol http --url 127.0.0.1:8000 --json
    python -m client --world-preset small --count 500 --concurrency 16 --timeout 2
    python -m client --request request.json --shared-memory system --admin-key "$TRITON_ADMIN_KEY"

One request comes from a JSON file (client/request_file.py: user_features, history_ids,
candidate_ids, candidate_features; checked before sending) or from the synthetic world;
it is sent over gRPC (default, port 8001) or HTTP (port 8000) and the ranked items are
printed with the route the server took (``--json`` for machine-readable output).
``--count M`` sends M world requests (or the file's request M times) with the asyncio
clients, ``--concurrency`` at a time, and prints a summary. ``--shared-memory system``
passes history_ids / candidate_ids / candidate_features through shared memory; the
shared-memory API of ``make serve`` needs the admin key (``--admin-key``, default
$TRITON_ADMIN_KEY). Exit codes: 0 answered, 1 the server (or shared memory) answered an
error or a request failed, 2 bad arguments or request file, 3 the server is unreachable.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time

import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from client.async_client import PROTOCOLS, Outcome, Summary, infer_many, summarize
from client.ranking_client import RankingRequest, infer
from client.request_file import RequestFileError, load_request, validate_request
from client.shared_memory import SHARED_MEMORY_KINDS, SharedMemoryError, infer_shared_memory
from export.config import PRESETS
from export.world import make_world
from serving.contract import ROUTES, RankingResult, RequestError

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
DEFAULT_URLS = {"grpc": "127.0.0.1:8001", "http": "127.0.0.1:8000"}  # make serve's ports


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def describe_error(error: Exception, url: str, protocol: str) -> tuple[int, str]:
    """(exit code, one-line message) for an exception raised while sending to ``url``."""
    if isinstance(error, InferenceServerException):
        status = str(error.status() or "").removeprefix("StatusCode.")
        if status == "DEADLINE_EXCEEDED":
            return EXIT_ERROR, f"client-side timeout waiting for {url}: {one_line(error.message())}"
        if status == "UNAVAILABLE":
            return EXIT_UNREACHABLE, f"cannot reach Triton at {url} over {protocol}: {one_line(error.message())}"
        return EXIT_ERROR, f"Triton answered {status or 'an error'}: {one_line(error.message())}"
    if isinstance(error, TimeoutError):  # before OSError, its base class
        return EXIT_ERROR, f"client-side timeout waiting for {url}: {one_line(error) or 'timed out'}"
    if isinstance(error, OSError):
        reason = error.strerror or error
        return EXIT_UNREACHABLE, f"cannot reach Triton at {url} over {protocol}: {one_line(reason)}"
    if isinstance(error, SharedMemoryError):
        return EXIT_ERROR, one_line(error)
    return EXIT_ERROR, f"{type(error).__name__}: {one_line(error)}"


def build_requests(args: argparse.Namespace, count: int) -> list[RankingRequest]:
    """``count`` requests: the file's request repeated, or world rows; RequestError if one breaks the contract."""
    if args.request is not None:
        return [load_request(args.request)] * count
    world = make_world(PRESETS[args.world_preset].world)
    batch = world.sample_requests(count, args.candidates, args.seed)
    requests = [RankingRequest.from_requests(batch, row) for row in range(count)]
    for request in requests:
        validate_request(request)
    return requests


def make_client(protocol: str, url: str, timeout_s: float | None) -> object:
    if protocol == "grpc":
        return grpcclient.InferenceServerClient(url)
    if timeout_s is None:
        return httpclient.InferenceServerClient(url)
    return httpclient.InferenceServerClient(url, connection_timeout=timeout_s, network_timeout=timeout_s)


def send_one(args: argparse.Namespace, request: RankingRequest) -> tuple[RankingResult, float]:
    """The answer to one request and its latency in ms (raises what tritonclient raises)."""
    client = make_client(args.protocol, args.url, args.timeout)
    grpc_timeout = args.timeout if args.protocol == "grpc" else None
    options = {"route": args.route, "latency_budget_ms": args.latency_budget_ms, "top_k": args.top_k}
    try:
        start = time.perf_counter()
        if args.shared_memory == "none":
            result = infer(client, request, client_timeout=grpc_timeout, **options)
        else:
            result = infer_shared_memory(
                client, request, args.shared_memory, args.admin_key, client_timeout=grpc_timeout, **options
            )
        return result, (time.perf_counter() - start) * 1e3
    finally:
        client.close()


def format_result(args: argparse.Namespace, result: RankingResult, latency_ms: float) -> str:
    asked = f" (asked: {args.route})" if args.route and args.route != result.route else ""
    head = (
        f"route taken: {result.route}{asked}; {result.scores.size} candidates; "
        f"{latency_ms:.1f} ms over {args.protocol} {args.url}"
    )
    rows = [head, f"{'rank':>4}  {'item id':>20}  {'score':>10}"]
    for rank, (item, score) in enumerate(zip(result.top_ids, result.top_scores, strict=True), 1):
        rows.append(f"{rank:>4}  {int(item):>20}  {float(score):>10.6f}")
    return "\n".join(rows)


def result_json(args: argparse.Namespace, result: RankingResult, latency_ms: float) -> dict:
    return {
        "route": result.route,
        "requested_route": args.route,
        "top_ids": [int(i) for i in result.top_ids],
        "top_scores": [float(s) for s in result.top_scores],
        "n_candidates": int(result.scores.size),
        "latency_ms": latency_ms,
        "protocol": args.protocol,
        "url": args.url,
        "shared_memory": args.shared_memory,
    }


def summary_json(args: argparse.Namespace, summary: Summary, outcomes: list[Outcome]) -> dict:
    messages = [describe_error(o.error, args.url, args.protocol)[1] for o in outcomes if not o.ok]
    return {
        **vars(summary),
        "concurrency": args.concurrency,
        "protocol": args.protocol,
        "url": args.url,
        "error_messages": list(dict.fromkeys(messages))[:5],  # the first distinct ones
    }


def format_summary(report: dict) -> str:
    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f} ms"

    rows = [
        f"{report['count']} requests over {report['protocol']} {report['url']}, concurrency {report['concurrency']}: "
        f"{report['answered']} answered, {report['errors']} errors ({report['timeouts']} client-side timeouts)",
        f"latency p50 {ms(report['p50_ms'])}, p99 {ms(report['p99_ms'])}; "
        f"{report['candidates_per_s']:.0f} candidates/s; wall {report['wall_s']:.2f} s",
        "routes taken: " + (", ".join(f"{r}={n}" for r, n in report["routes"].items()) or "-"),
    ]
    rows += [f"error: {m}" for m in report["error_messages"]]
    return "\n".join(rows)


def run_many(args: argparse.Namespace, requests: list[RankingRequest]) -> int:
    start = time.perf_counter()
    outcomes = asyncio.run(
        infer_many(
            args.url, requests, args.protocol, args.concurrency, args.timeout,
            route=args.route, latency_budget_ms=args.latency_budget_ms, top_k=args.top_k,
        )
    )
    summary = summarize(outcomes, time.perf_counter() - start)
    report = summary_json(args, summary, outcomes)
    failed = [o.error for o in outcomes if not o.ok]
    if failed and not summary.answered:  # nothing got through: one clear error instead of a table
        code, message = describe_error(failed[0], args.url, args.protocol)
        print(f"error: all {summary.count} requests failed; the first: {message}", file=sys.stderr)
        return code
    print(json.dumps(report) if args.json else format_summary(report))
    return EXIT_ERROR if failed else EXIT_OK


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m client", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--request", metavar="FILE", help="a JSON request file (client/request_file.py)")
    source.add_argument("--world-preset", choices=sorted(PRESETS), default="small", help="synthetic world requests")
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="world request seed (default 0)")
    parser.add_argument("--candidates", type=positive_int, default=256, metavar="N", help="per world request (256)")
    parser.add_argument("--url", metavar="HOST:PORT", help="default 127.0.0.1:8001 (grpc), 127.0.0.1:8000 (http)")
    parser.add_argument("--protocol", choices=PROTOCOLS, default="grpc")
    parser.add_argument("--route", metavar="ROUTE", help=f"{' | '.join(ROUTES)}; the server's default is auto")
    parser.add_argument("--latency-budget-ms", type=float, metavar="MS", help="for the auto route")
    parser.add_argument("--top-k", type=int, metavar="K", help="results to return; the server's default when left out")
    parser.add_argument("--timeout", type=float, metavar="S", help="client-side timeout per request, seconds")
    parser.add_argument("--shared-memory", choices=SHARED_MEMORY_KINDS, default="none")
    parser.add_argument(
        "--admin-key", default=os.environ.get("TRITON_ADMIN_KEY"), metavar="KEY", help="default $TRITON_ADMIN_KEY"
    )
    parser.add_argument("--count", type=positive_int, metavar="M", help="send M requests with the asyncio client")
    parser.add_argument("--concurrency", type=positive_int, metavar="C", help="in flight with --count (default 8)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    if args.concurrency is not None and args.count is None:
        parser.error("--concurrency needs --count")
    if args.count is not None and args.shared_memory != "none":
        parser.error("--shared-memory sends single requests; leave out --count")
    if args.timeout is not None and args.timeout <= 0:
        parser.error(f"--timeout must be > 0, got {args.timeout}")
    args.url = args.url or DEFAULT_URLS[args.protocol]
    args.concurrency = args.concurrency or 8
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        requests = build_requests(args, args.count or 1)
    except (RequestFileError, RequestError) as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return EXIT_USAGE
    if args.count is not None:
        return run_many(args, requests)
    try:
        result, latency_ms = send_one(args, requests[0])
    except Exception as e:  # every failure becomes one line and an exit code
        code, message = describe_error(e, args.url, args.protocol)
        print(f"error: {message}", file=sys.stderr)
        return code
    print(json.dumps(result_json(args, result, latency_ms)) if args.json else format_result(args, result, latency_ms))
    return EXIT_OK
