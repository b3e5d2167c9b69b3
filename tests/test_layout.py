"""Where code lives: the import rules between the project's rooms, read from the source with ast.

serving/ imports none of export/, client/, perf/, deploy/; export/ none of client/, perf/, deploy/;
nothing imports deploy/ (it sits on top: it may use serving, client and export); no import cycle;
the modules the Python stubs load import only the standard library, numpy, onnx, onnxruntime and
triton_python_backend_utils at module level (torch only lazily); model_repository/ holds configs
and one-import model.py files, nothing importable.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("serving", "export", "client", "perf", "deploy")
FORBIDDEN = {
    "serving": {"export", "client", "perf", "deploy", "tests"},
    "export": {"client", "perf", "deploy", "tests"},
    "client": {"perf", "deploy"},
    "perf": {"deploy"},
    "deploy": {"perf", "tests"},
}
STUB_ENTRY_POINTS = ("serving.triton.onnx_model", "serving.triton.ranker_model")
STUB_THIRD_PARTY = {"numpy", "onnx", "onnxruntime", "triton_python_backend_utils"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def imports(name: str, top_level_only: bool = False) -> set[str]:
    """Absolute module names ``name`` imports (anywhere, or only at module level)."""
    tree = ast.parse(MODULES[name].read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    out: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{alias.name}" for alias in node.names)  # `from pkg import module`
    return out


def project_imports(name: str, top_level_only: bool = False) -> set[str]:
    return {m for m in imports(name, top_level_only) if m in MODULES and m != name}


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_rooms_import_only_downwards(package: str):
    bad = {
        (name, target)
        for name in MODULES
        if name.split(".")[0] == package
        for target in imports(name)
        if target.split(".")[0] in FORBIDDEN[package]
    }
    assert not bad, f"{package}/ must not import {sorted(FORBIDDEN[package])}: {sorted(bad)}"


def test_no_import_cycle():
    graph = {name: project_imports(name) for name in MODULES}
    state: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt) :] + [nxt] if nxt in path else [node, nxt]
                pytest.fail(f"import cycle: {' -> '.join(cycle)}")
            if nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_stub_modules_import_no_torch_client_or_export():
    seen, todo = set(), list(STUB_ENTRY_POINTS)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo.extend(project_imports(name, top_level_only=True))
        outside = {
            m.split(".")[0]
            for m in imports(name, top_level_only=True)
            if m.split(".")[0] not in PACKAGES and m.split(".")[0] not in ("__future__",)
        }
        third_party = {m for m in outside if m not in sys.stdlib_module_names}
        assert third_party <= STUB_THIRD_PARTY, f"{name} imports {sorted(third_party - STUB_THIRD_PARTY)}"
    assert all(m.startswith("serving.") or m == "serving" for m in seen), sorted(seen)


def test_model_repository_holds_configs_and_one_line_entry_points():
    repo = ROOT / "model_repository"
    assert not list(repo.glob("*.py")), "no Python modules at the repository's top: Triton takes folders for models"
    for model_py in sorted(repo.glob("*/1/model.py")):
        body = [n for n in ast.parse(model_py.read_text()).body if not isinstance(n, ast.Expr)]  # docstring
        assert len(body) == 1 and isinstance(body[0], ast.ImportFrom), f"{model_py}: one import line"
        assert body[0].module.startswith("serving.triton.") and body[0].names[0].asname == "TritonPythonModel"
