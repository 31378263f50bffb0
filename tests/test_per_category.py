"""The per-category comparison of `benchmarks/per_category.py`: its paired gain and interval."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest


def per_category() -> ModuleType:
    path = Path(__file__).parents[1] / "benchmarks" / "per_category.py"
    spec = importlib.util.spec_from_file_location("per_category", path)
    module = importlib.util.module_from_spec(spec)
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
