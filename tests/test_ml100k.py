"""MovieLens-100k end to end on a slice: tiny models trained, exported into their own repository,
evaluated offline, in process and through a real Triton server started on that repository."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from client.ml100k_eval import route_plan, served_evaluation
from export.loo import leave_one_out
from export.ml100k import PRESETS, markdown_table, run
from export.movielens import load_ml100k, ml100k_dir
from serving.contract import FIXED_ROUTES

PRESET = "ml-100k-tiny"
USERS = 12  # offline slice
SERVED_USERS = 4
METRICS = ("hr10", "ndcg10", "hr50", "ndcg50", "mrr")


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    root = tmp_path_factory.mktemp("ml100k")
    repository = root / "model_repository"
    report = run(PRESET, repository, root / "reports", root / "checkpoints", users=USERS)
    return report, repository


def test_report_has_every_scorer_and_metric(exported: tuple[dict, Path]) -> None:
    report, repository = exported
    for part in ("valid", "test"):
        assert set(report["offline"][part]) == {"light", "heavy", "cascade", "random", "popularity", "cooccurrence"}
        for metrics in report["offline"][part].values():
            assert set(metrics) == set(METRICS)
            assert all(0.0 <= v <= 1.0 for v in metrics.values())
    assert report["protocol"]["test_users"] == USERS
    assert (repository / "scorer_heavy" / "1" / "model.onnx").is_file()
    assert (repository / "ranker" / "configs" / "cpu.pbtxt").is_file()


def test_inprocess_graphs_match_pytorch(exported: tuple[dict, Path]) -> None:
    report, _ = exported
    for route in FIXED_ROUTES:
        for key in METRICS:
            want = report["offline"]["test"][route][key]
            assert report["inprocess_test"][route][key] == pytest.approx(want, abs=1e-6)


def test_checkpoint_reused(exported: tuple[dict, Path], tmp_path: Path) -> None:
    report, repository = exported
    ckpt_dir = repository.parent / "checkpoints"
    again = run(PRESET, tmp_path / "repo", tmp_path / "reports", ckpt_dir, users=2)
    assert again["checkpoint"] == report["checkpoint"]
    assert again["training"] == report["training"]


def test_served_evaluation_agrees_with_inprocess(exported: tuple[dict, Path]) -> None:
    report, repository = exported
    cases = list(leave_one_out(load_ml100k(ml100k_dir()), PRESETS[PRESET].history_max).test[:SERVED_USERS])
    served = served_evaluation(repository, cases)
    assert set(served["routes"]) == set(route_plan())
    for name, result in served["routes"].items():
        assert sum(result["routes_taken"].values()) == SERVED_USERS
        assert set(result["routes_taken"]) <= set(FIXED_ROUTES), name
        assert result["max_abs_score_diff_vs_inprocess"] <= 1e-5, name
        assert result["same_top10_as_inprocess"] == 1.0, name
        assert np.isfinite(result["p50_ms"]) and result["p50_ms"] > 0
    table = markdown_table({**report, "served": served})
    # header, rule, served routes, three baselines; a blank line; header, rule, heavy minus each baseline
    assert len(table.splitlines()) == 2 + len(route_plan()) + 3 + 1 + 2 + 3
    assert "| cooccurrence | " in table.splitlines()[-1]


def test_heavy_against_baselines_on_the_same_users(exported: tuple[dict, Path]) -> None:
    report, _ = exported
    versus = report["heavy_vs_baselines_test"]
    assert set(versus) == {"random", "popularity", "cooccurrence"}
    for name, by_metric in versus.items():
        assert set(by_metric) == set(METRICS)
        for key, b in by_metric.items():
            want = report["offline"]["test"]["heavy"][key] - report["offline"]["test"][name][key]
            assert b["diff"] == pytest.approx(want, abs=1e-9)
            assert b["ci95_low"] <= b["diff"] <= b["ci95_high"] and 0.0 <= b["p_not_above"] <= 1.0
