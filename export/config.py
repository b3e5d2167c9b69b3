"""Configuration: small frozen dataclasses and the named presets.

    tiny   tests: trains in seconds
    small  the CPU demo default: trains in minutes on 2 cores
    large  GPU-scale user tower (>= 1 GFLOP per request at L_MAX); exports, not trained here

Pick one with ``PRESETS[name]``; nothing here is mutated after construction.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from serving.contract import L_MAX


@dataclass(frozen=True)
class WorldConfig:
    """The synthetic world (export/world.py)."""

    n_users: int = 2_000
    n_items: int = 2_000
    n_creators: int = 200
    n_topics: int = 16
    latent_dim: int = 16
    n_age_buckets: int = 8
    n_regions: int = 32
    n_devices: int = 4
    n_price_buckets: int = 10
    history_min: int = 8
    history_max: int = 64
    train_requests: int = 20_000
    train_candidates: int = 32
    eval_requests: int = 300
    eval_candidates: int = 256
    seed: int = 0


@dataclass(frozen=True)
class EmbeddingConfig:
    """Unified table. ``row_budget`` bounds the rows before pruning; features whose
    cardinality fits their share get one row per value, larger ones are hashed."""

    dim: int = 32
    row_budget: int = 8_000
    min_buckets: int = 64
    prune_min_count: int = 10  # rows looked up fewer times in training share the fallback row


@dataclass(frozen=True)
class UserTowerConfig:
    d_model: int = 64
    n_heads: int = 4
    n_layers: int = 2
    ff_mult: int = 2
    max_len: int = L_MAX


@dataclass(frozen=True)
class LightConfig:
    hidden: tuple[int, ...] = (64, 32)


@dataclass(frozen=True)
class HeavyConfig:
    n_heads: int = 2
    hidden: tuple[int, ...] = (128, 64, 32)


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 3_000
    batch_requests: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-5
    seed: int = 0


@dataclass(frozen=True)
class Preset:
    name: str
    world: WorldConfig
    embedding: EmbeddingConfig
    tower: UserTowerConfig
    light: LightConfig
    heavy: HeavyConfig
    train: TrainConfig

    def to_dict(self) -> dict:
        return asdict(self)


_SMALL = Preset(
    name="small",
    world=WorldConfig(),
    embedding=EmbeddingConfig(),
    tower=UserTowerConfig(),
    light=LightConfig(),
    heavy=HeavyConfig(),
    train=TrainConfig(),
)

PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        name="tiny",
        world=WorldConfig(
            n_users=300, n_items=800, n_creators=60, n_topics=8, latent_dim=12,
            history_min=4, history_max=24, train_requests=1_500, train_candidates=16,
            eval_requests=60, eval_candidates=64,
        ),
        embedding=EmbeddingConfig(dim=8, row_budget=1_200, min_buckets=16, prune_min_count=2),
        tower=UserTowerConfig(d_model=16, n_heads=2, n_layers=1),
        light=LightConfig(hidden=(16,)),
        heavy=HeavyConfig(n_heads=2, hidden=(32, 16)),
        train=TrainConfig(steps=150, batch_requests=32),
    ),
    "small": _SMALL,
    "large": replace(
        _SMALL,
        name="large",
        world=replace(_SMALL.world, n_users=100_000, n_items=200_000, n_creators=10_000, history_max=L_MAX),
        embedding=EmbeddingConfig(dim=64, row_budget=250_000),
        tower=UserTowerConfig(d_model=256, n_heads=8, n_layers=4, ff_mult=4),
        light=LightConfig(hidden=(256, 128)),
        heavy=HeavyConfig(n_heads=4, hidden=(512, 256, 128)),
    ),
}


def cardinalities(world: WorldConfig) -> dict[str, int]:
    """Number of distinct raw values of each embedded feature (contract.EMBEDDED_FEATURES order)."""
    return {
        "user_id": world.n_users,
        "age_bucket": world.n_age_buckets,
        "region": world.n_regions,
        "device": world.n_devices,
        "item_id": world.n_items,
        "category": world.n_topics,
        "creator_id": world.n_creators,
        "price_bucket": world.n_price_buckets,
    }
