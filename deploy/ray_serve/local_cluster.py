"""A one-node Ray cluster on 127.0.0.1 for the local checks, always stopped afterwards.

Every Ray socket stays on loopback: ``--node-ip-address=127.0.0.1`` alone is not enough,
Ray swaps loopback for the machine's address unless RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0.
The fixed default ports (GCS 6379, client server 10001, the agents') are replaced by free
ones, so a second cluster on the machine does not collide with this one. Ray's token
authentication is on, with a token made for this process (not ~/.ray/auth_token, which
another cluster may have written).
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from serving.server.launcher import free_port

log = logging.getLogger(__name__)

RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token"}
TOKEN_VAR = "RAY_AUTH_TOKEN"


def configure_environment() -> None:
    """Put RAY_ENV and an auth token into os.environ; call it before importing ray (ray reads
    them at import), the cluster and its workers inherit them."""
    os.environ.update(RAY_ENV)
    os.environ.setdefault(TOKEN_VAR, secrets.token_hex(32))


def ray_binary() -> str:
    path = Path(sys.executable).parent / "ray"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run `make deploy-venv` (requirements-deploy.txt)")
    return str(path)


def ray_env() -> dict[str, str]:
    if any(os.environ.get(k) != v for k, v in RAY_ENV.items()) or not os.environ.get(TOKEN_VAR):
        raise RuntimeError("call deploy.ray_serve.local_cluster.configure_environment() before importing ray")
    return dict(os.environ)


def stop_cluster() -> None:
    """``ray stop --force``: the processes of every cluster started from this user's temp dir."""
    subprocess.run([ray_binary(), "stop", "--force"], env=ray_env(), capture_output=True, timeout=120)


@contextmanager
def local_cluster(num_cpus: int = 2, temp_dir: Path = Path("/tmp/ray_ranking")) -> Iterator[str]:
    """Start a head node, yield its GCS address (``127.0.0.1:PORT``), stop it on exit."""
    env = ray_env()
    port = free_port()
    cmd = [
        ray_binary(),
        "start",
        "--head",
        "--node-ip-address=127.0.0.1",
        f"--port={port}",
        f"--num-cpus={num_cpus}",
        "--include-dashboard=false",
        "--disable-usage-stats",
        f"--ray-client-server-port={free_port()}",
        f"--dashboard-agent-listen-port={free_port()}",
        f"--dashboard-agent-grpc-port={free_port()}",
        f"--runtime-env-agent-port={free_port()}",
        f"--metrics-export-port={free_port()}",
        f"--temp-dir={temp_dir}",
    ]
    shutil.rmtree(temp_dir, ignore_errors=True)  # an earlier run's session logs
    try:
        started = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
        if started.returncode != 0:
            raise RuntimeError(f"ray start failed ({started.returncode}): {started.stderr[-2000:]}")
        log.info("ray head on 127.0.0.1:%d (logs in %s)", port, temp_dir)
        yield f"127.0.0.1:{port}"
    finally:
        stop_cluster()
