"""Stop a replica's Triton server when the replica process dies without its graceful shutdown
(force-killed after graceful_shutdown_timeout_s, ``ray.kill``, a crash, ``ray stop``).

Started by the replica right after its server is ready; it detaches (a second fork, so a
worker's exit that kills its direct children does not take it along) and waits on pidfds
for the replica or the server to exit. If the replica goes first: SIGTERM to the server's
process group (the server and its Python stubs), SIGKILL after ``--stop-timeout`` s, then
the stubs' shared-memory regions are removed. If the server goes first there is nothing to do.

    python -m deploy.ray_serve.watchdog --replica-pid PID --server-pid PID [--stop-timeout 20]
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import sys
from contextlib import suppress

from serving.server.launcher import SHM_DIR, stub_processes


def _wait(pidfds: list[int], timeout_s: float | None) -> list[int]:
    ready, _, _ = select.select(pidfds, [], [], timeout_s)
    return ready


def stop_group(server_pid: int, server_fd: int, stop_timeout_s: float) -> None:
    """SIGTERM the server's group, SIGKILL it after ``stop_timeout_s``, remove the stubs' regions."""
    regions = [s.shm_region for s in stub_processes(server_pid)]
    with suppress(ProcessLookupError):
        os.killpg(server_pid, signal.SIGTERM)
    if not _wait([server_fd], stop_timeout_s):
        with suppress(ProcessLookupError):
            os.killpg(server_pid, signal.SIGKILL)
        _wait([server_fd], 5.0)
    with suppress(ProcessLookupError):
        os.killpg(server_pid, signal.SIGKILL)  # stubs that outlived the server
    for name in regions:
        with suppress(OSError):
            (SHM_DIR / name).unlink()


def watch(replica_pid: int, server_pid: int, stop_timeout_s: float) -> None:
    try:
        server_fd = os.pidfd_open(server_pid)
    except ProcessLookupError:
        return  # stopped already
    try:
        replica_fd = os.pidfd_open(replica_pid)
    except ProcessLookupError:  # the replica died before the watch began
        stop_group(server_pid, server_fd, stop_timeout_s)
        return
    if server_fd not in _wait([replica_fd, server_fd], None):
        stop_group(server_pid, server_fd, stop_timeout_s)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Stop a replica's tritonserver when the replica dies.")
    parser.add_argument("--replica-pid", type=int, required=True)
    parser.add_argument("--server-pid", type=int, required=True)
    parser.add_argument("--stop-timeout", type=float, default=20.0)
    args = parser.parse_args(argv)
    if os.fork() > 0:  # detach: the replica reaps this parent at once
        os._exit(0)
    watch(args.replica_pid, args.server_pid, args.stop_timeout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
