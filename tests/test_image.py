"""The Docker image, checked without Docker: the Dockerfile against the version table, the pins, the
build context (.dockerignore) and the entrypoint script.

hadolint runs in `make test`; pip's resolver (tests/test_image_resolve.py reads its output) in `make image-check`."""

from __future__ import annotations

import ast
import json
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from export.image_versions import BASE_IMAGES, base_image, dockerfile_base_tag
from export.preflight import BINDINGS_DIST

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    out, current = [], ""
    for line in text.splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        current += line.rstrip().removesuffix("\\") + " "
        if not line.rstrip().endswith("\\"):
            word, _, rest = current.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
            current = ""
    return out


def pins(path: Path) -> dict[str, str]:
    found = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep and version, f"{path.name}: {line!r} is not pinned with =="
            found[name.split("[")[0].strip().lower()] = version.strip()
    return found


# -- the version table and the pins -------------------------------------------------------------


def test_tensorrt_pin_is_the_from_tags_tensorrt():
    row = base_image(dockerfile_base_tag(DOCKERFILE))
    assert pins(ROOT / "requirements-image.txt")[BINDINGS_DIST] == row.tensorrt.value


def test_image_pins_agree_with_the_project_pins():
    """The image runs the code that requirements.txt tested: same torch (pinned everywhere), numpy, ONNX, ORT."""
    image, project = pins(ROOT / "requirements-image.txt"), pins(ROOT / "requirements.txt")
    for name in ("torch", "numpy", "onnx", "onnxruntime", "protobuf"):
        assert image[name] == project[name], name
    assert "cuda-python" not in image and not any(n.startswith("tensorrt-cu12") for n in image)


@pytest.mark.parametrize("tag", sorted(BASE_IMAGES))
def test_every_table_value_has_a_source(tag: str):
    row = BASE_IMAGES[tag]
    for field in ("triton", "tensorrt", "cuda", "python", "glibc"):
        value = getattr(row, field)
        assert value.value and len(value.source) > 20, (tag, field)
        assert not value.inferred or value.check, f"{tag} {field} is inferred: say how to confirm it in the image"
    assert row.user_source


def test_unknown_tag_names_the_known_ones():
    with pytest.raises(ValueError, match="no version table entry for tritonserver:24.01-py3 .*25.08-py3"):
        base_image("24.01-py3")


@pytest.mark.parametrize(
    ("text", "tag"),
    [
        ("FROM nvcr.io/nvidia/tritonserver:25.08-py3\n", "25.08-py3"),
        ("ARG BASE_TAG=25.08-py3\nFROM nvcr.io/nvidia/tritonserver:${BASE_TAG}\n", "25.08-py3"),
        ("ARG T=25.08-py3\nFROM nvcr.io/nvidia/tritonserver:$T AS base\n", "25.08-py3"),
    ],
    ids=["literal", "arg-braces", "arg-bare"],
)
def test_dockerfile_base_tag(tmp_path: Path, text: str, tag: str):
    (tmp_path / "Dockerfile").write_text(text)
    assert dockerfile_base_tag(tmp_path / "Dockerfile") == tag


@pytest.mark.parametrize(
    "text", ["FROM ubuntu:24.04\n", "FROM nvcr.io/nvidia/tritonserver:${UNSET}\n", "RUN true\n"], ids=str
)
def test_dockerfile_base_tag_refuses(tmp_path: Path, text: str):
    (tmp_path / "Dockerfile").write_text(text)
    with pytest.raises(ValueError, match="FROM"):
        dockerfile_base_tag(tmp_path / "Dockerfile")


# -- the Dockerfile -----------------------------------------------------------------------------


def user_problems(text: str, user: tuple[str, int, int]) -> list[str]:
    """What in a Dockerfile fights the base image's own user (name, UID, GID)."""
    name, uid, gid = user
    owned = {name, str(uid), str(gid), f"{uid}:{gid}", f"{name}:{name}"}
    problems = []
    for word, args in instructions(text):
        if word == "RUN":
            for cmd in re.split(r"&&|;|\|\|", args):
                tokens = shlex.split(cmd)
                if tokens and tokens[0] in ("useradd", "adduser", "groupadd", "addgroup"):
                    ids = {t for a, t in zip(tokens, tokens[1:]) if a in ("-u", "--uid", "-g", "--gid")}
                    if ids & {str(uid), str(gid)} or tokens[-1] == name:
                        problems.append(f"{cmd.strip()}: the base image already has {name} ({uid}:{gid})")
                    else:
                        problems.append(f"{cmd.strip()}: a second user; use the base image's {name}")
        elif word == "USER" and args not in owned:
            problems.append(f"USER {args}: not the base image's {name} ({uid}:{gid})")
        elif word == "COPY":
            for chown in re.findall(r"--chown=(\S+)", args):
                if chown not in owned:
                    problems.append(f"COPY --chown={chown}: no such user in the base image")
    return problems


def test_dockerfile_uses_the_base_images_user():
    row = base_image(dockerfile_base_tag(DOCKERFILE))
    assert user_problems(DOCKERFILE.read_text(), row.user) == []
    assert ("USER", "1000:1000") in instructions(DOCKERFILE.read_text())


@pytest.mark.parametrize(
    "text",
    [
        "RUN useradd --create-home --uid 1000 triton\nUSER 1000:1000\n",  # the line that failed the build
        "RUN apt-get update && useradd -u 1000 app\n",
        "RUN useradd triton-server\n",
        "USER triton\n",
        "COPY --chown=triton:triton serving/ serving/\n",
    ],
    ids=["old-useradd", "useradd-after-and", "same-name", "unknown-user", "chown-unknown"],
)
def test_user_problems_found(text: str):
    assert user_problems(text, ("triton-server", 1000, 1000))


def test_dockerfile_environment_and_entrypoint():
    steps = instructions(DOCKERFILE.read_text())
    env = " ".join(args for word, args in steps if word == "ENV")
    assert "PYTHONDONTWRITEBYTECODE=1" in env and "PYTHONPATH" not in env
    entrypoint = json.loads(next(args for word, args in steps if word == "ENTRYPOINT"))
    assert entrypoint == ["/opt/nvidia/nvidia_entrypoint.sh", "/opt/ranking/docker_entrypoint.sh"]
    assert any(w == "COPY" and a.endswith("export/docker_entrypoint.sh /opt/ranking/docker_entrypoint.sh")
               for w, a in steps)
    runs = [a for w, a in steps if w == "RUN"]
    assert any("pip install --no-cache-dir --no-deps /tmp/ranking" in r for r in runs), "the project is installed"
    assert any("python3 -m export.preflight --versions-only" in r for r in runs)
    assert not [a for w, a in steps if w == "WORKDIR"], "nothing may depend on the working directory"


def copied_sources() -> list[str]:
    sources = []
    for word, args in instructions(DOCKERFILE.read_text()):
        if word == "COPY":
            parts = [p for p in args.split() if not p.startswith("--")]
            sources += parts[:-1]
    return sources


def test_the_image_copies_every_export_module_the_engine_build_imports():
    copied = {Path(s).name for s in copied_sources() if s.startswith("export/")}
    todo, seen = ["tensorrt_build.py", "preflight.py"], set()
    while todo:
        name = todo.pop()
        seen.add(name)
        for node in ast.walk(ast.parse((ROOT / "export" / name).read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("export."):
                module = node.module.split(".")[1] + ".py"
                if module not in seen:
                    todo.append(module)
    assert seen | {"__init__.py"} <= copied, f"not copied: {sorted(seen - copied)}"
    assert "serving/" in copied_sources() and "model_repository/" in copied_sources()


# -- the build context --------------------------------------------------------------------------


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """moby/patternmatcher's translation: * and ? stop at /, **/ is any number of directories."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            i += 2
            if pattern.startswith("/", i):
                i += 1
            out += ".*" if i >= len(pattern) else "(.*/)?"
            continue
        ch = pattern[i]
        out += "[^/]*" if ch == "*" else "[^/]" if ch == "?" else re.escape(ch)
        i += 1
    return re.compile(f"^{out}$")


def excluded(dockerignore: str, path: str) -> bool:
    """Docker's rule: a pattern matches the path or one of its parents; the last matching line decides."""
    parents = path.split("/")
    candidates = ["/".join(parents[: i + 1]) for i in range(len(parents))]
    result = False
    for line in dockerignore.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = _pattern_regex(line.removeprefix("!").strip().strip("/"))
        if any(pattern.match(c) for c in candidates):
            result = not negate
    return result


@pytest.mark.parametrize(
    ("rules", "path", "out"),
    [
        ("*/temp*", "somedir/temporary.txt", True),
        ("*/temp*", "temporary.txt", False),
        ("temp?", "tempa", True),
        ("**/*.go", "a/b/c.go", True),
        ("**/*.go", "c.go", True),
        ("*.md\n!README.md", "README.md", False),
        ("*\n!src\nsrc/**/*.tmp", "src/a/b.tmp", True),
        ("*\n!src", "src/a/b.py", False),
    ],
    ids=str,
)
def test_dockerignore_model(rules: str, path: str, out: bool):
    """The examples of Docker's .dockerignore documentation, so the model below is Docker's."""
    assert excluded(rules, path) is out


@pytest.mark.parametrize(
    "path",
    [
        "pyproject.toml",
        "requirements-image.txt",
        "serving/contract.py",
        "serving/triton/ranker_model.py",
        "export/tensorrt_build.py",
        "export/docker_entrypoint.sh",
        "model_repository/ranker/config.pbtxt",
        "model_repository/ranker/1/model.py",
        "model_repository/scorer_light/1/model.onnx",  # the image builds its engines from these
        "model_repository/scorer_light/1/model.onnx.data",
    ],
)
def test_build_context_keeps(path: str):
    assert not excluded((ROOT / ".dockerignore").read_text(), path)


@pytest.mark.parametrize(
    "path",
    [
        ".venv/bin/python",
        ".git/HEAD",
        "checkpoints/small/model.pt",
        "reports/fp8.json",
        "build/lib/serving/contract.py",
        "perf/results/summary.json",
        "adaptive_ranking_triton.egg-info/PKG-INFO",
        "serving/__pycache__/contract.cpython-312.pyc",
        "export/__pycache__/profiles.cpython-311.pyc",
        "model_repository/ranker/1/__pycache__/model.cpython-312.pyc",
        "model_repository/scorer_light/1/model.plan",
        "model_repository/scorer_light/1/model.plan.json",
        "model_repository/scorer_light/1/model.fp32.onnx",
        "model_repository/scorer_light/1/model.fp8.onnx",
        "model_repository/tensorrt.timing_cache",
        "tests/test_image.py",
    ],
)
def test_build_context_leaves_out(path: str):
    assert excluded((ROOT / ".dockerignore").read_text(), path)


def test_build_context_has_everything_the_dockerfile_copies():
    rules = (ROOT / ".dockerignore").read_text()
    for source in copied_sources():
        path = ROOT / source
        files = [p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
        files = files if path.is_dir() else [path]
        assert files, f"{source} is copied but missing"
        for f in files:
            rel = f.relative_to(ROOT).as_posix()
            if not re.search(r"\.(plan|plan\.json|fp32\.onnx|fp8\.onnx)$", rel):
                assert not excluded(rules, rel), f"{rel}: copied by the Dockerfile but left out of the context"


# -- the entrypoint script ----------------------------------------------------------------------


def run_entrypoint(tmp_path: Path, build_exit: int, env: dict[str, str]) -> tuple[int, list[str], list[str]]:
    """export/docker_entrypoint.sh with python3 and tritonserver replaced by recorders on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, code in (("python3", build_exit), ("tritonserver", 0)):
        (bin_dir / name).write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > "{tmp_path}/{name}.args"\nexit {code}\n')
        (bin_dir / name).chmod(0o755)
    proc = subprocess.run(["sh", str(ROOT / "export" / "docker_entrypoint.sh"), "--log-verbose=1"],
                          env={"PATH": f"{bin_dir}:/usr/bin:/bin", **env}, capture_output=True, text=True)

    def args(name: str) -> list[str]:
        path = tmp_path / f"{name}.args"
        return path.read_text().splitlines() if path.is_file() else []

    return proc.returncode, args("python3"), args("tritonserver")


def test_entrypoint_builds_then_serves_the_cache_copy(tmp_path: Path):
    code, build, server = run_entrypoint(tmp_path, 0, {"ENGINE_CACHE": str(tmp_path / "c"), "TRITON_ADMIN_KEY": "k"})
    assert code == 0
    assert build == ["-m", "export.tensorrt_build", "--model-repository", "/opt/ranking/model_repository",
                     "--cache", str(tmp_path / "c")]
    assert f"--model-repository={tmp_path}/c/model_repository" in server
    assert "--model-control-mode=none" in server and "--exit-on-error=true" in server
    assert "--http-restricted-api=model-repository,shared-memory,logging,trace:admin-key=k" in server
    assert server[-1] == "--log-verbose=1", "extra arguments go to tritonserver"


def test_entrypoint_does_not_serve_when_the_build_refuses(tmp_path: Path):
    code, build, server = run_entrypoint(tmp_path, 1, {"ENGINE_CACHE": str(tmp_path / "c")})
    assert code == 1 and build and server == []
