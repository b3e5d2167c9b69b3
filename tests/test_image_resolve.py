"""How export/image_resolve.py reads pip's resolver: recorded outputs and reports, no network.

The resolver itself needs PyPI and runs in `make image-check`, with the old conflicting set as its
negative control."""

from __future__ import annotations

from pathlib import Path

import pytest

from export.image_resolve import ResolveError, Target, interpret, pip_command, second_tensorrt, unmet_on_image

# pip 23.2's output for tests/data/requirements-image-conflict.txt (the image's old set), trimmed.
CONFLICT_OUTPUT = """\
Collecting cuda-python==12.9.0 (from -r tests/data/requirements-image-conflict.txt (line 3))
  Obtaining dependency information for cuda-python==12.9.0
INFO: pip is looking at multiple versions of torch to determine which version is compatible with other requirements.
ERROR: Cannot install -r req.txt (line 3) and -r req.txt (line 4) because these package versions have conflicting \
dependencies.

The conflict is caused by:
    cuda-python 12.9.0 depends on cuda-bindings~=12.9.0
    torch 2.13.0 depends on cuda-bindings<14 and >=13.0.3; platform_system == "Linux" and python_version < "3.15"

To fix this you could try to:
1. loosen the range of package versions you've specified

ERROR: ResolutionImpossible: for help visit https://pip.pypa.io/en/latest/topics/dependency-resolution/
"""


def test_conflict_is_read_as_a_conflict():
    with pytest.raises(ResolveError, match=r"conflict: .*cuda-python 12.9.0 depends on cuda-bindings~=12.9.0.*torch"):
        interpret(1, CONFLICT_OUTPUT, None)


def test_sdist_only_pin_is_read_as_no_wheel():
    output = (
        "ERROR: Could not find a version that satisfies the requirement tensorrt-cu12==10.11.0.33 (from versions: "
        "none)\nERROR: No matching distribution found for tensorrt-cu12==10.11.0.33\n"
    )
    with pytest.raises(ResolveError, match="no wheel: .*tensorrt-cu12==10.11.0.33") as e:
        interpret(1, output, None)
    assert e.value.kind == "no wheel"


def test_other_failures_and_missing_report_fail():
    with pytest.raises(ResolveError, match="pip failed: exit 2.*Max retries exceeded"):
        interpret(2, "WARNING: Retrying ... Max retries exceeded with url: /simple/torch/\n", None)
    with pytest.raises(ResolveError, match="pip failed: exit 0, no report"):
        interpret(0, "", None)


def _report(numpy: str, host_python: str = "3.11") -> dict:
    def item(name: str, version: str, requires: list[str]) -> dict:
        return {"metadata": {"name": name, "version": version, "requires_dist": requires}}

    env = {"python_version": host_python, "python_full_version": f"{host_python}.7", "implementation_name": "cpython",
           "implementation_version": f"{host_python}.7", "platform_system": "Linux", "platform_machine": "x86_64",
           "sys_platform": "linux", "os_name": "posix", "platform_python_implementation": "CPython",
           "platform_release": "", "platform_version": ""}
    # ml_dtypes 0.5.4's real requirements: the 3.12 line is false on pip's 3.11 interpreter
    ml = ['numpy>=1.21', 'numpy>=1.21.2; python_version >= "3.10"', 'numpy>=1.23.3; python_version >= "3.11"',
          'numpy>=1.26.0; python_version >= "3.12"', 'numpy>=2.1.0; python_version >= "3.13"']
    return {"environment": env, "install": [item("ml_dtypes", "0.5.4", ml), item("numpy", numpy, [])]}


def test_resolved_set_is_read():
    report = _report("1.26.4")
    assert interpret(0, "", report) == {"ml-dtypes": "0.5.4", "numpy": "1.26.4"}


@pytest.mark.parametrize(("numpy", "unmet"), [("1.26.4", 0), ("1.25.2", 1)], ids=["met", "unmet"])
def test_requirements_only_the_images_python_has(numpy: str, unmet: int):
    report = _report(numpy)
    found = unmet_on_image(report, interpret(0, "", report), Target("3.12.3", "2.39"))
    assert len(found) == unmet
    assert all("numpy>=1.26.0" in f for f in found)


def test_second_tensorrt_library_is_found():
    assert second_tensorrt({"tensorrt-cu13-bindings": "10.13.2.6", "torch": "2.13.0"}) == []
    assert second_tensorrt({"tensorrt-cu13-libs": "10.13.2.6"}) == ["tensorrt-cu13-libs==10.13.2.6"]


def test_pip_command_targets_the_image(tmp_path: Path):
    cmd = pip_command(Path("requirements-image.txt"), Target("3.12.3", "2.39"), tmp_path / "report.json")
    joined = " ".join(cmd)
    for flag in ("--isolated", "--dry-run", "--ignore-installed", "--only-binary=:all:", "--python-version 3.12",
                 "--abi cp312", "--index-url https://pypi.org/simple", "--platform manylinux_2_39_x86_64",
                 "--platform manylinux_2_17_x86_64", "--platform manylinux2014_x86_64", "-r requirements-image.txt"):
        assert flag in joined, flag
    assert "manylinux_2_40" not in joined


