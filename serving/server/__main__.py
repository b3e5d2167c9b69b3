"""Run the bundled tritonserver on a model repository until Ctrl-C / SIGTERM.

    python -m serving.server --model-repository model_repository --config-name cpu \
        --http-port 8000 --grpc-port 8001 --metrics-port 8002 [--supervise]

It waits until the server is ready and logs the URLs; ``--supervise`` also probes every
model and restarts the server on the same ports when a Python stub dies or it exits.
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import signal
import sys
import time
from pathlib import Path

from serving.server.launcher import (
    ADMIN_KEY_HEADER,
    GRPC_ADMIN_KEY_HEADER,
    REPO_ROOT,
    RESTRICTED_APIS,
    ServerConfig,
    check_artifacts,
    run_server,
)
from serving.server.supervisor import SupervisorConfig, supervise

log = logging.getLogger("serving.server")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-repository", type=Path, default=REPO_ROOT / "model_repository")
    parser.add_argument("--config-name", default="cpu", help="configs/<name>.pbtxt; '' for config.pbtxt")
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--metrics-port", type=int, default=8002)
    parser.add_argument("--log-verbose", type=int, default=0)
    parser.add_argument("--startup-timeout", type=float, default=300.0)
    parser.add_argument(
        "--supervise",
        action="store_true",
        help="probe every model and restart the server when a stub dies or it exits (serving/server/supervisor.py)",
    )
    parser.add_argument("--probe-interval", type=float, default=5.0, help="seconds between probes (--supervise)")
    parser.add_argument("--probe-timeout", type=float, default=10.0, help="seconds one probe may take (--supervise)")
    parser.add_argument(
        "--restricted-api-key",
        default=os.environ.get("TRITON_ADMIN_KEY"),
        help=f"header '{ADMIN_KEY_HEADER}' needed for {RESTRICTED_APIS}; default $TRITON_ADMIN_KEY, else random",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        check_artifacts(args.model_repository)
    except FileNotFoundError as e:
        log.error("%s", e)
        return 2
    admin_key = args.restricted_api_key or secrets.token_urlsafe(16)
    if not args.restricted_api_key:
        log.info("admin key %s (headers %r / %r)", admin_key, ADMIN_KEY_HEADER, GRPC_ADMIN_KEY_HEADER)
    cfg = ServerConfig(
        model_repository=args.model_repository,
        config_name=args.config_name or None,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        log_verbose=args.log_verbose,
        admin_key=admin_key,
        startup_timeout_s=args.startup_timeout,
    )
    for signum in (signal.SIGINT, signal.SIGTERM):  # also when started with SIGINT ignored (`cmd &`)
        signal.signal(signum, signal.default_int_handler)
    if args.supervise:
        probes = SupervisorConfig(probe_interval_s=args.probe_interval, probe_timeout_s=args.probe_timeout)
        try:
            return supervise(cfg, probes)
        except KeyboardInterrupt:
            return 0
    try:
        with run_server(cfg) as srv:
            log.info("HTTP http://%s gRPC %s metrics %s; Ctrl-C stops", srv.http_url, srv.grpc_url, srv.metrics_url)
            while srv.process.poll() is None:
                time.sleep(0.5)
            log.error("tritonserver exited on its own (code %s); log %s", srv.process.returncode, srv.log_path)
            return 1
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
