"""The per-category comparison of `benchmarks/per_category.py`: its paired gain and interval."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pandas as pd
import pytest


def per_category() -> ModuleType:
    path = Path(__file__).parents[1] / "benchmarks" / "per_category.py"
    spec = importlib.util.spec_from_file_location("per_category", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up
    spec.loader.exec_module(module)
    return module


def test_compare_gives_the_seed_mean_gain_with_a_paired_interval() -> None:
    """A model that ranks every positive first (AUC 1) against one at chance (two seeds):
    the gain is 1 minus the chance model's mean AUC, relative to it, and its interval stays
    above 0; the same model against itself gains exactly 0."""
    rng = np.random.default_rng(0)
    labels = (rng.random(2000) < 0.1).astype(float)
    perfect = [labels + rng.random(2000) * 0.1 for _ in range(2)]
    chance = [rng.random(2000) for _ in range(2)]
    result = per_category().compare(labels, perfect, chance, rounds=200, seed=0)
    assert result["multi_auc"] == pytest.approx(1.0)
    assert result["gain"] == pytest.approx(1.0 - result["single_auc"])
    assert result["relative_gain"] == pytest.approx(result["gain"] / result["single_auc"])
    assert abs(result["single_auc"] - 0.5) < 0.05 and result["gain_ci95"][0] > 0.3
    same = per_category().compare(labels, chance, chance, rounds=50, seed=0)
    assert same["gain"] == 0 and same["gain_ci95"] == [0.0, 0.0]
    assert result["positives"] == int(labels.sum()) and result["rows"] == 2000


def test_a_regression_gain_is_the_error_removed() -> None:
    rng = np.random.default_rng(1)
    labels = rng.normal(size=1000)
    close = [labels + rng.normal(scale=0.1, size=1000)]
    far = [labels + rng.normal(scale=1.0, size=1000)]
    result = per_category().compare(labels, close, far, rounds=100, seed=0, kind="regression")
    assert result["multi_rmse"] == pytest.approx(0.1, rel=0.1)
    assert result["single_rmse"] == pytest.approx(1.0, rel=0.1)
    assert result["gain"] == pytest.approx(result["single_rmse"] - result["multi_rmse"])
    assert result["relative_gain"] == pytest.approx(result["gain"] / result["single_rmse"])
    assert result["gain_ci95"][0] > 0.8 and result["positives"] is None


def test_a_declared_predictions_file_is_compared_per_category_and_group(tmp_path: Path) -> None:
    """The file `benchmarks/declared_mtl.py --predictions` writes: a binary and a regression
    task, two categories; the multi-task model is exact on category 1 only."""
    import argparse

    rng = np.random.default_rng(2)
    n = 400
    category = np.repeat([1, 2], n // 2)
    late = (rng.random(n) < 0.3).astype(float)
    late[::50] = np.nan  # unknown labels are left out
    days = rng.normal(size=n)
    noise = rng.random(n)
    frame = pd.DataFrame(
        {
            "category_id": category,
            "group": np.where(category == 1, "head", "tail"),
            "label/binary/late": late,
            "label/regression/days": days,
            "multi_task/7/late": np.where(category == 1, np.nan_to_num(late), noise),
            "multi_task/7/days": np.where(category == 1, days, 0.0),
            "single_task/7/late": noise,
            "single_task/7/days": np.zeros(n),
        }
    )
    frame.to_parquet(tmp_path / "p.parquet")
    module = per_category()
    inputs = module.from_predictions(tmp_path / "p.parquet")
    assert inputs.kinds == {"late": "binary", "days": "regression"}
    args = argparse.Namespace(min_positives=10, min_rows=50, bootstrap=50)
    report = module.comparison(inputs, "multi_task", "single_task", args)
    late_part, days_part = report["tasks"]["late"], report["tasks"]["days"]
    assert late_part["categories"]["1"]["multi_auc"] == pytest.approx(1.0)
    assert late_part["categories"]["2"]["gain"] == 0.0
    assert late_part["groups"]["head"]["rows"] == int((~np.isnan(late[category == 1])).sum())
    assert days_part["categories"]["1"]["multi_rmse"] == 0.0
    assert days_part["categories"]["2"]["gain"] == 0.0
    assert set(late_part["groups"]) == {"head", "tail", "all"}
    assert "| late | category 1 |" in module.markdown(report)


def test_category_ids_are_named_from_the_values_the_schema_hashes(tmp_path: Path) -> None:
    from shopguide.dataset.examples import hash_values

    (tmp_path / "names.csv").write_text("value,label\nbeleza_saude,health_beauty\n")
    module = per_category()
    names = module.category_names(tmp_path / "names.csv")
    [beauty] = hash_values(pd.Series(["beleza_saude"]).astype("string"))
    assert names == {str(beauty): "health_beauty"}
    report = {"tasks": {"late": {"categories": {str(beauty): {"gain": 0.1}, "7": {}}}}}
    assert set(module.named(report, names)["tasks"]["late"]["categories"]) == {
        "health_beauty",
        "7",
    }
