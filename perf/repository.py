"""The model repository as perf/ and the tests use it: configs parsed with protobuf, and copies.

cfg = ranker_config(Path("model_repository"))        # the served RankerConfig (CPU profile)
repository_copy(src, dst, {"load_window_ms": "0"})   # a copy with ranker parameters replaced
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from serving.ranker import RankerConfig

RANKER_CONFIGS = ("config.pbtxt", "configs/cpu.pbtxt")  # both profiles


def read_config(path: Path) -> mc.ModelConfig:
    return text_format.Parse(Path(path).read_text(), mc.ModelConfig())


def ranker_config(repository: Path, config: str = "configs/cpu.pbtxt") -> RankerConfig:
    """The ranker's parameters as served from ``repository`` (one profile's config)."""
    params = read_config(Path(repository) / "ranker" / config).parameters
    return RankerConfig.from_parameters({key: value.string_value for key, value in params.items()})


def repository_copy(src: Path, dst: Path, ranker_parameters: dict[str, str] | None = None) -> Path:
    """A copy of ``src`` (artifacts included), the ranker's ``ranker_parameters`` replaced in both
    profiles (written back by protobuf: the copies lose their comments)."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in RANKER_CONFIGS if ranker_parameters else ():
        path = dst / "ranker" / name
        cfg = read_config(path)
        for key, value in ranker_parameters.items():
            if key not in cfg.parameters:
                raise ValueError(f"{path} has no parameter {key!r}")
            cfg.parameters[key].string_value = value
        RankerConfig.from_parameters({k: v.string_value for k, v in cfg.parameters.items()})  # still valid
        path.write_text(text_format.MessageToString(cfg))
    return dst


def unbatched_copy(src: Path, dst: Path) -> Path:
    """A copy of ``src`` whose batched models (max_batch_size > 0) take one request per execution
    (max_batch_size 1), in every profile: the batching A/B with nothing else changed."""
    repository_copy(src, dst)
    for path in sorted(dst.glob("*/config.pbtxt")) + sorted(dst.glob("*/configs/*.pbtxt")):
        cfg = read_config(path)
        if cfg.max_batch_size > 1:
            cfg.max_batch_size = 1
            path.write_text(text_format.MessageToString(cfg))
    return dst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["unbatched"])
    parser.add_argument("dst", type=Path)
    parser.add_argument("--model-repository", type=Path, default=Path("model_repository"))
    args = parser.parse_args(argv)
    unbatched_copy(args.model_repository, args.dst)
    print(args.dst)
    return 0


if __name__ == "__main__":
    sys.exit(main())
