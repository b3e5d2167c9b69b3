"""Start the Triton server bundled with nvidia-pytriton (2.51.0) on a model repository.

No Docker, no GPU: the ``tritonserver`` binary, the Python backend and its stubs come from
the wheel. ``with run_server(ServerConfig(model_repository=...)) as server:`` starts it on
free ports and stops it, and its stubs, on exit. Command line: ``python -m serving.server``.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from pathlib import Path

from serving.contract import ENGINE_MODELS

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]  # the source checkout (an editable install)
BACKEND_CACHE = REPO_ROOT / "build" / "triton_backends"
# Admin APIs need the key in a header (gRPC: with Triton's prefix); inference, health, metadata stay open.
RESTRICTED_APIS = "model-repository,shared-memory,logging,trace"
ADMIN_KEY_HEADER = "admin-key"
GRPC_ADMIN_KEY_HEADER = f"triton-grpc-protocol-{ADMIN_KEY_HEADER}"


@dataclass(frozen=True)
class ServerConfig:
    model_repository: Path
    config_name: str | None = "cpu"  # configs/<name>.pbtxt; None = config.pbtxt
    host: str = "127.0.0.1"
    http_port: int = 0  # 0 = pick a free port
    grpc_port: int = 0
    metrics_port: int = 0
    log_verbose: int = 0
    admin_key: str | None = None  # restricts RESTRICTED_APIS to requests with this header
    log_path: Path | None = None  # None = build/logs/tritonserver-<http port>.log
    extra_args: tuple[str, ...] = ()
    startup_timeout_s: float = 120.0
    stop_timeout_s: float = 30.0


@dataclass(frozen=True)
class RunningServer:
    """A started server. ``http_url`` / ``grpc_url`` are ``host:port``, the form that
    tritonclient's ``InferenceServerClient`` and perf_analyzer's ``-u`` take."""

    config: ServerConfig  # with the ports resolved
    process: subprocess.Popen
    log_path: Path
    http_url: str
    grpc_url: str
    metrics_url: str


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (another process may take it later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tritonserver_home() -> Path:
    """``site-packages/pytriton/tritonserver`` (bin/, backends/, python_backend_stubs/)."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("nvidia-pytriton is not installed: run `make venv`")
    return Path(next(iter(spec.submodule_search_locations))) / "tritonserver"


def build_backend_dir(cache_dir: Path = BACKEND_CACHE) -> Path:
    """A backend directory whose ``python/`` holds the Python backend plus the stub for
    this interpreter's version; built once, then reused. Returns ``cache_dir``."""
    target = cache_dir / "python"
    stub_name = "triton_python_backend_stub"
    if (target / stub_name).is_file() and (target / "libtriton_python.so").is_file():
        return cache_dir
    home = tritonserver_home()
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = home / "python_backend_stubs" / version / stub_name
    if not stub.is_file():
        raise RuntimeError(f"nvidia-pytriton has no Python backend stub for Python {version} ({stub})")
    tmp = cache_dir / f".python.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(home / "backends" / "python", tmp, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(stub, tmp / stub_name)
    try:
        tmp.rename(target)  # atomic: concurrent builders either win or find it done
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (target / stub_name).is_file():
            raise
    log.info("built Triton backend directory %s (stub for Python %s)", target, version)
    return cache_dir


def server_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for tritonserver and its Python stubs.

    The 2.51 stub embeds the base interpreter isolated (``-I``: PYTHONPATH and the working
    directory are ignored) but finds ``python3`` on PATH: with this venv's ``bin/`` first it
    reads ``pyvenv.cfg`` and gets the venv's site-packages, where ``pip install -e .`` put
    this project (``serving``). PYTHONPATH is set for stubs that do read it."""
    env = dict(os.environ if base is None else base)
    site_packages = Path(sysconfig.get_paths()["purelib"])
    libs = [
        tritonserver_home().parent.parent / "nvidia_pytriton.libs",  # libtritonserver, libcudart
        Path(sys.base_prefix) / "lib",  # libpython3.X.so for the stub
        site_packages / "nvidia" / "cuda_runtime" / "lib",
    ]

    def prepend(name: str, paths: list[str]) -> None:
        env[name] = os.pathsep.join(paths + [p for p in [env.get(name, "")] if p])

    prepend("LD_LIBRARY_PATH", [str(p) for p in libs if p.is_dir()])
    prepend("PATH", [str(Path(sys.executable).parent)])
    prepend("PYTHONPATH", [str(site_packages)])
    return env


def check_artifacts(model_repository: Path) -> None:
    """Raise FileNotFoundError naming every engine model whose ``1/model.onnx`` is missing."""
    missing = [m for m in ENGINE_MODELS if not (Path(model_repository) / m / "1" / "model.onnx").is_file()]
    if missing:
        raise FileNotFoundError(f"{model_repository} lacks 1/model.onnx for {', '.join(missing)}: run `make export`")


def server_command(cfg: ServerConfig, backend_dir: Path) -> list[str]:
    """The tritonserver command line for ``cfg`` (ports already resolved)."""
    cmd = [
        str(tritonserver_home() / "bin" / "tritonserver"),
        f"--model-repository={Path(cfg.model_repository).resolve()}",
        f"--backend-directory={backend_dir}",
        "--model-control-mode=none",
        f"--http-address={cfg.host}",
        f"--grpc-address={cfg.host}",
        f"--metrics-address={cfg.host}",
        f"--http-port={cfg.http_port}",
        f"--grpc-port={cfg.grpc_port}",
        f"--metrics-port={cfg.metrics_port}",
        "--exit-on-error=true",
        "--strict-readiness=true",
        f"--log-verbose={cfg.log_verbose}",
    ]
    if cfg.config_name:
        cmd.append(f"--model-config-name={cfg.config_name}")
    if cfg.admin_key:
        restriction = f"{RESTRICTED_APIS}:{ADMIN_KEY_HEADER}={cfg.admin_key}"
        cmd += [f"--http-restricted-api={restriction}", f"--grpc-restricted-protocol={restriction}"]
    return cmd + list(cfg.extra_args)


def _log_tail(path: Path, lines: int = 40) -> str:
    try:
        tail = "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as e:
        tail = f"<unreadable: {e}>"
    return f"log {path}, last {lines} lines:\n{tail}"


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as resp:
            return resp.status == 200
    except OSError:  # URLError included
        return False


def _is_ready(server: RunningServer) -> bool:
    """Ready, and the metrics port up too: Triton starts its metrics service after the HTTP one
    (~40 ms later on an idle machine, longer under load), so a scrape right after readiness
    could be refused."""
    return _answers(f"http://{server.http_url}/v2/health/ready") and _answers(server.metrics_url)


STUB_NAME = "triton_python_backend_stub"
SHM_DIR = Path("/dev/shm")


@dataclass(frozen=True)
class StubProcess:
    """One Python backend stub of a server, from its command line (2.51: model.py path,
    shared-memory region, sizes, parent pid, backend dir, ..., instance name)."""

    pid: int
    model_path: str  # <repository>/<model>/<version>/model.py
    shm_region: str  # name under /dev/shm
    instance: str  # e.g. "scorer_light_0_1"

    @property
    def model(self) -> str:
        return Path(self.model_path).parents[1].name


def stub_processes(server_pid: int) -> list[StubProcess]:
    """The Python backend stubs in the server's process group (its pid is the group id:
    run_server starts it in a new session). Linux only (/proc)."""
    stubs = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.getpgid(int(entry.name)) != server_pid:
                continue
            argv = [a.decode(errors="replace") for a in (entry / "cmdline").read_bytes().split(b"\0")]
        except (OSError, ProcessLookupError):
            continue
        if argv and argv[0].endswith(STUB_NAME) and len(argv) > 8:
            stubs.append(StubProcess(int(entry.name), argv[1], argv[2], argv[8]))
    return sorted(stubs, key=lambda s: s.instance)


def _remove_shm_regions(regions: Iterable[str]) -> None:
    # A stub or server that is killed leaves its 1 MiB+ shared-memory region in /dev/shm (tmpfs,
    # so RAM); the names are per-stub UUIDs, safe to remove once the whole group is dead.
    for name in regions:
        with suppress(OSError):
            (SHM_DIR / name).unlink()


def _stop(proc: subprocess.Popen, timeout_s: float) -> None:
    """SIGINT the server, wait, SIGKILL it if needed, then kill what is left of its group (stubs)
    and remove the stubs' shared-memory regions that a kill leaves behind."""
    regions = [s.shm_region for s in stub_processes(proc.pid)]  # stubs may outlive a killed server
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("tritonserver (pid %d) ignored SIGINT for %.0f s; killing it", proc.pid, timeout_s)
            proc.kill()
            proc.wait()
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # the session's group id is the server's pid
    _remove_shm_regions(regions)


def kill_server(server: RunningServer, known_stubs: list[StubProcess] = ()) -> None:
    """SIGKILL tritonserver and its stubs at once, wait for the server, remove the stubs'
    shared memory (of ``known_stubs`` too: a dead stub's command line is gone). For a
    restart: a server with a dead stub ignores SIGINT for its whole exit timeout (30 s),
    and anything in flight fails either way."""
    regions = {s.shm_region for s in [*stub_processes(server.process.pid), *known_stubs]}
    with suppress(ProcessLookupError):
        os.killpg(server.process.pid, signal.SIGKILL)
    server.process.wait()
    _remove_shm_regions(regions)


def resolve_ports(cfg: ServerConfig) -> ServerConfig:
    """``cfg`` with every port 0 replaced by a port free now."""
    return replace(
        cfg,
        http_port=cfg.http_port or free_port(),
        grpc_port=cfg.grpc_port or free_port(),
        metrics_port=cfg.metrics_port or free_port(),
    )


def start_server(cfg: ServerConfig, append_log: bool = False) -> RunningServer:
    """Start tritonserver for ``cfg`` (ports 0 resolved first) and return once it is ready.
    The caller stops it (``stop_server`` / ``kill_server``); ``run_server`` does both.

    Raises RuntimeError with the tail of the server log if it exits while starting,
    TimeoutError if it is not ready within ``cfg.startup_timeout_s``; the process is
    stopped in both cases. ``append_log`` keeps an earlier run's log (a restart)."""
    cfg = resolve_ports(cfg)
    log_path = cfg.log_path or REPO_ROOT / "build" / "logs" / f"tritonserver-{cfg.http_port}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    cmd = server_command(cfg, build_backend_dir())
    log.debug("starting %s", " ".join(cmd))
    with open(log_path, "ab" if append_log else "wb") as log_file:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=server_env(),
            start_new_session=True,  # its own process group: the stubs are stopped with it
        )
    urls = (
        f"{cfg.host}:{cfg.http_port}",
        f"{cfg.host}:{cfg.grpc_port}",
        f"http://{cfg.host}:{cfg.metrics_port}/metrics",
    )
    server = RunningServer(cfg, proc, log_path, *urls)
    try:
        deadline = time.monotonic() + cfg.startup_timeout_s
        while not _is_ready(server):
            if proc.poll() is not None:
                raise RuntimeError(f"tritonserver exited ({proc.returncode}) while starting; {_log_tail(log_path)}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"tritonserver not ready after {cfg.startup_timeout_s:.0f} s; {_log_tail(log_path)}")
            time.sleep(0.2)
    except BaseException:  # KeyboardInterrupt included: never leave a half-started server behind
        stop_server(server)
        raise
    log.info("tritonserver ready (pid %d, log %s)", proc.pid, log_path)
    return server


def stop_server(server: RunningServer) -> None:
    """Stop a started server and its stubs (SIGINT, then SIGKILL after ``stop_timeout_s``)."""
    _stop(server.process, server.config.stop_timeout_s)
    log.info("tritonserver stopped (exit code %s)", server.process.returncode)


@contextmanager
def run_server(cfg: ServerConfig) -> Iterator[RunningServer]:
    """Start tritonserver for ``cfg``, yield once it is ready, stop it on exit (see start_server)."""
    server = start_server(cfg)
    try:
        yield server
    finally:
        stop_server(server)
