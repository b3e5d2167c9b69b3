"""Resolve the image's Python requirements with pip for the image's platform: a conflict fails here, not in the build.

    .venv/bin/python -m export.image_resolve                 # make image-check (CI): requirements-image.txt
    .venv/bin/python -m export.image_resolve --expect-conflict tests/data/requirements-image-conflict.txt

pip's own resolver in dry-run mode (``pip install --dry-run --ignore-installed --report``) for the
Dockerfile's base image row of export/image_versions.py: CPython of its Python version, manylinux
x86_64 up to its glibc, wheels only (``docker build`` must not depend on building an sdist), against
PyPI only (this machine's pip configuration, local indexes and constraints play no part). Nothing is
downloaded beyond metadata and nothing is installed; it needs network access to PyPI (about a minute).

pip evaluates environment markers with the interpreter it runs on, not ``--python-version``: the
check therefore re-evaluates every marker of the resolved set for the image's Python, and fails when
a requirement only that Python has is not met by the resolved set. ``--expect-conflict``
is the negative control: it passes only when pip reports a conflict for the given file.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from export.image_versions import base_image, dockerfile_base_tag

log = logging.getLogger("export.image_resolve")
ROOT = Path(__file__).resolve().parents[1]
PYPI = "https://pypi.org/simple"


class ResolveError(RuntimeError):
    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind  # "conflict", "no wheel", "marker", "second TensorRT", "pip failed"


@dataclass(frozen=True)
class Target:
    python: str  # major.minor.micro
    glibc: str  # major.minor

    @property
    def python_short(self) -> str:
        return ".".join(self.python.split(".")[:2])

    def platforms(self) -> list[str]:
        """Every manylinux x86_64 tag a wheel may carry to install on this glibc (pip needs each one listed)."""
        newest = int(self.glibc.split(".")[1])
        legacy = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
        tags = []
        for minor in range(newest, 4, -1):
            tags.append(f"manylinux_2_{minor}_x86_64")
            if minor in legacy:
                tags.append(f"{legacy[minor]}_x86_64")
        return tags


def pip_command(requirements: Path, target: Target, report: Path, index_url: str = PYPI) -> list[str]:
    abi = "cp" + target.python_short.replace(".", "")
    cmd = [sys.executable, "-m", "pip", "--isolated", "install", "--dry-run", "--ignore-installed"]
    cmd += ["--only-binary=:all:", "--python-version", target.python_short, "--implementation", "cp", "--abi", abi]
    for tag in target.platforms():
        cmd += ["--platform", tag]
    cmd += ["--target", str(report.parent / "target"), "--index-url", index_url, "--report", str(report)]
    if os.environ.get("PIP_CERT"):  # --isolated ignores PIP_* variables; a TLS-intercepting proxy still needs this
        cmd += ["--cert", os.environ["PIP_CERT"]]
    return [*cmd, "-r", str(requirements)]


def interpret(returncode: int, output: str, report: dict | None) -> dict[str, str]:
    """{canonical name: version} pip would install, or ResolveError with pip's own explanation."""
    lines = output.splitlines()
    if returncode == 0 and report is not None:
        return {canonicalize_name(i["metadata"]["name"]): i["metadata"]["version"] for i in report["install"]}
    if any("ResolutionImpossible" in line or "conflicting dependencies" in line for line in lines):
        start = next((i for i, line in enumerate(lines) if "The conflict is caused by" in line), 0)
        end = next((i for i in range(start + 1, len(lines)) if not lines[i].strip()), len(lines))
        raise ResolveError("conflict", " / ".join(line.strip() for line in lines[start:end]))
    missing = [line.strip() for line in lines if "No matching distribution found" in line]
    if missing:
        raise ResolveError("no wheel", " / ".join(missing))
    tail = " / ".join(line.strip() for line in lines[-15:] if line.strip())
    raise ResolveError("pip failed", f"exit {returncode}, {'no report, ' if report is None else ''}{tail}")


def unmet_on_image(report: dict, installed: dict[str, str], target: Target) -> list[str]:
    """Requirements pip skipped because their marker is false on its own interpreter, that the image's
    Python needs, and that the resolved set does not satisfy (pip evaluates markers on the host)."""
    host = dict(report["environment"])
    image = {**host, "python_version": target.python_short, "python_full_version": target.python}
    image["implementation_version"] = target.python
    unmet = []
    for item in report["install"]:
        for spec in item["metadata"].get("requires_dist", []):
            req = Requirement(spec)
            for extra in ["", *item.get("requested_extras", [])]:
                if not req.marker or req.marker.evaluate({**host, "extra": extra}):
                    continue
                if not req.marker.evaluate({**image, "extra": extra}):
                    continue
                have = installed.get(canonicalize_name(req.name))
                if have is None or not req.specifier.contains(have, prereleases=True):
                    unmet.append(f"{item['metadata']['name']} needs {spec} (resolved: {have or 'absent'})")
    return sorted(set(unmet))


def second_tensorrt(installed: dict[str, str]) -> list[str]:
    """TensorRT library wheels: a second libnvinfer beside the image's, preferred by the bindings' RUNPATH."""
    return sorted(f"{n}=={v}" for n, v in installed.items() if n.startswith("tensorrt") and n.endswith("-libs"))


def resolve(requirements: Path, target: Target) -> dict[str, str]:
    """Run pip's resolver on ``requirements`` for ``target``; the resolved set, or ResolveError."""
    with tempfile.TemporaryDirectory() as tmp:
        report_path = Path(tmp) / "report.json"
        env = {**os.environ, "PIP_CONFIG_FILE": os.devnull}  # no pip.conf at all (global ones included)
        proc = subprocess.run(pip_command(requirements, target, report_path), capture_output=True, text=True, env=env)
        report = json.loads(report_path.read_text()) if report_path.is_file() else None
    installed = interpret(proc.returncode, proc.stdout + proc.stderr, report)
    unmet = unmet_on_image(report, installed, target)
    if unmet:
        raise ResolveError("marker", f"pip skipped what Python {target.python} needs: {'; '.join(unmet)}")
    extra = second_tensorrt(installed)
    if extra:
        raise ResolveError("second TensorRT", f"{', '.join(extra)} would shadow the image's libnvinfer")
    return installed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requirements", type=Path, default=ROOT / "requirements-image.txt")
    parser.add_argument("--dockerfile", type=Path, default=ROOT / "Dockerfile", help="its FROM tag picks the target")
    parser.add_argument("--expect-conflict", type=Path, help="negative control: pass only if pip finds a conflict")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    tag = dockerfile_base_tag(args.dockerfile)
    row = base_image(tag)
    target = Target(row.python.value, row.glibc.value)
    requirements = args.expect_conflict or args.requirements
    start = time.monotonic()
    try:
        installed = resolve(requirements, target)
    except ResolveError as e:
        took = time.monotonic() - start
        if args.expect_conflict and e.kind == "conflict":
            log.info("%s: conflict found as expected (%.0f s): %s", requirements, took, e)
            return
        raise SystemExit(f"{requirements} for tritonserver:{tag} (CPython {target.python}): {e}") from None
    took = time.monotonic() - start
    if args.expect_conflict:
        raise SystemExit(f"{requirements} resolved ({len(installed)} packages), but a conflict was expected")
    pins = ", ".join(f"{n}=={v}" for n, v in sorted(installed.items()))
    log.info("%s resolves for tritonserver:%s, CPython %s, glibc %s in %.0f s: %d packages (%s)",
             requirements, tag, target.python, target.glibc, took, len(installed), pins)


if __name__ == "__main__":
    main()
