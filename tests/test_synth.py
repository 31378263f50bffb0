"""The synthetic generator: exact reproducibility, planted rates and structure, and the Bayes AUC
read back through the real Taobao adapter."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.metrics import roc_auc_score

from shopguide.adapters import ingest
from shopguide.config import Params
from shopguide.errors import ShopguideError
from shopguide.synth import World, bayes_auc, generate

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"events": 150_000, "users": 4_000, "items": 20_000, "categories": 60}


def params(**synth: object) -> Params:
    return Params.model_validate({"synth": {**SMALL, **synth}})


@pytest.fixture(scope="module")
def synth_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Params]:
    d = tmp_path_factory.mktemp("synth")
    p = params()
    generate(d / "events.csv", d / "truth.parquet", p)
    ingest(d / "events.csv", d / "events.parquet", d / "exposures.parquet", d / "q.parquet", p)
    return d, p


def test_same_seed_same_bytes_other_seed_differs(synth_run, tmp_path: Path) -> None:
    d, p = synth_run
    generate(tmp_path / "a.csv", tmp_path / "a.parquet", p)
    assert (tmp_path / "a.csv").read_bytes() == (d / "events.csv").read_bytes()
    generate(tmp_path / "b.csv", tmp_path / "b.parquet", params(seed=8))
    assert (tmp_path / "b.csv").read_bytes() != (d / "events.csv").read_bytes()


def test_events_read_by_taobao_adapter_with_planted_rates(synth_run) -> None:
    d, p = synth_run
    events = pd.read_parquet(d / "events.parquet")
    assert abs(len(events) - SMALL["events"]) < 0.05 * SMALL["events"]
    assert not events.duplicated().any()
    assert events["ts"].between(p.protocol.window_start, p.protocol.window_end - 1).all()
    truth = pd.read_parquet(d / "truth.parquet")
    x = pd.read_parquet(d / "exposures.parquet").query("not sampled")
    assert len(x) == len(truth)  # every planted exposure is one canonical exposure
    for task, rate in p.synth.positive_rate.items():
        assert truth[f"p_{task}"].mean() == pytest.approx(rate, rel=0.15)
        assert x[task].mean() == pytest.approx(rate, rel=0.2)
    # Zipf popularity: the most popular item is seen far more often than the median one.
    counts = truth["item_id"].value_counts()
    assert counts.iloc[0] > 50 * counts.median()


@pytest.mark.parametrize("dim", [1, 2, 3])
def test_category_effects_share_a_low_dimensional_space_of_unit_variance(dim: int) -> None:
    effect = World(params(categories=20_000, category_factor_dim=dim).synth).category_effect
    assert np.linalg.matrix_rank(effect) == dim
    assert effect.std(axis=0) == pytest.approx(1.0, abs=0.03)  # the dimension ties, not scales
    correlation = np.corrcoef(effect.T)[np.triu_indices(3, 1)]
    if dim == 1:  # one factor: a category's effects on every task move together
        assert correlation == pytest.approx(1.0)
    else:
        assert correlation.min() < 0.99
    assert (correlation > -0.05).all()  # non-negative loadings: tasks never pull apart


def test_bayes_auc_is_the_true_probabilities_auc(synth_run) -> None:
    d, p = synth_run
    result = bayes_auc(d / "truth.parquet", d / "exposures.parquet", p.data, p.protocol)
    x = (
        pd.read_parquet(d / "exposures.parquet")
        .query("not sampled")
        .merge(pd.read_parquet(d / "truth.parquet"), on=["user_id", "item_id"])
    )
    test = x[x["split"] == "test"]
    assert result["test_exposures"] == len(test)
    for task in p.protocol.tasks:
        assert result[task] == pytest.approx(roc_auc_score(test[task], test[f"p_{task}"]))
        assert result[task] > 0.7  # the planted signal is learnable


def test_no_signal_means_chance_bayes_auc(tmp_path: Path) -> None:
    p = params(signal_scale=0.0, events=100_000)
    generate(tmp_path / "e.csv", tmp_path / "t.parquet", p)
    ingest(tmp_path / "e.csv", tmp_path / "e.parquet", tmp_path / "x.parquet", tmp_path / "q.pq", p)
    result = bayes_auc(tmp_path / "t.parquet", tmp_path / "x.parquet", p.data, p.protocol)
    assert result["mean"] == pytest.approx(0.5, abs=0.06)


def test_bayes_auc_without_truth_is_a_clear_error(tmp_path: Path) -> None:
    p = params()
    with pytest.raises(ShopguideError, match=r"truth\.parquet: not found"):
        bayes_auc(tmp_path / "truth.parquet", tmp_path / "x.parquet", p.data, p.protocol)


def test_ceiling_benchmark_form_reproduces_bayes_and_fit_learns(tmp_path: Path) -> None:
    """benchmarks/synth_ceiling.py end to end on a small run: the generator's form with the
    true factors gives exactly the Bayes AUC (so the fitted form is the right one), and the
    fitted factors score above chance but not above Bayes on every task."""
    out = tmp_path / "run"
    command = [sys.executable, "benchmarks/synth_ceiling.py", "--events", "200000"]
    command += ["--out", str(out), "--results", str(tmp_path), "--l2", "1e-3", "--epochs", "2"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((tmp_path / "synth-ceiling-200000.json").read_text())
    assert report["true_factors_in_form_auc"] == report["bayes_auc"]
    for task, auc in report["ceiling_auc"].items():
        assert 0.55 < auc <= report["bayes_auc"][task], (task, auc)
    assert report["chosen_l2"] == "0.001"


def test_a_denser_world_gets_results_of_its_own() -> None:
    """The synth-scale scripts' world sizes: ids grow with events by default, `--users` /
    `--items` ask for another world, and no two worlds of one size share a results file name."""
    spec = importlib.util.spec_from_file_location("synth_scale", ROOT / "benchmarks/synth_scale.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    default = module.world_size(10_000_000, None, None)
    assert default == {"events": 10_000_000, "users": 200_000, "items": 1_000_000}
    assert module.world_size(1_000_000, None, None)["users"] == 20_000  # the floor
    assert module.density_suffix(default) == ""
    dense = module.world_size(10_000_000, 20_000, None)
    assert dense == {"events": 10_000_000, "users": 20_000, "items": 1_000_000}
    assert module.density_suffix(dense) == "-20000u-1000000i"
    assert module.density_suffix(module.world_size(10_000_000, 20_000, 100_000)) == "-20000u"
    assert module.density_suffix(module.world_size(10_000_000, None, 50_000)) == "-200000u-50000i"


def test_scale_benchmark_skips_validation_and_takes_overrides(tmp_path: Path) -> None:
    """benchmarks/synth_scale.py as benchmarks/gpu_throughput.sh runs it on a machine without
    Great Expectations: no validation step, and `--set` reaches the params every step reads."""
    out = tmp_path / "run"
    command = [sys.executable, "benchmarks/synth_scale.py", "--events", "50000", "--out", str(out)]
    command += ["--no-validate", "--set", "data.duckdb_threads=1"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((out / "synth_scale.json").read_text())
    assert [s["step"] for s in report["steps"]] == ["synth", "ingest", "features"]
    assert report["validated"] is False
    assert yaml.safe_load((out / "params.yaml").read_text())["data"]["duckdb_threads"] == 1
    assert report["features"]["training_rows"] > 1000
    assert 0.5 < report["bayes_auc"]["cart"] < 1.0


def bound_report(tmp_path: Path, name: str, *args: str) -> dict:
    out = tmp_path / name
    command = [sys.executable, "benchmarks/synth_bound.py", "--out", str(out), *args]
    command += ["--results", str(tmp_path), "--threads", "1"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads((out / "synth_bound.json").read_text())


def test_bound_reaches_bayes_only_where_the_labels_identify_the_factors(tmp_path: Path) -> None:
    """benchmarks/synth_bound.py: told the item factors, a user's other labelled exposures
    place its factor. With hundreds of positives per user the bound comes within 0.015 of the
    Bayes AUC; with the default world's sparse labels it stays far below, above the prior."""
    dense = bound_report(
        tmp_path,
        "dense",
        *("--events", "200000", "--users", "200", "--items", "1000"),
        *("--set", "synth.positive_rate={cart: 0.2, fav: 0.1, buy: 0.2}"),
    )
    sparse = bound_report(tmp_path, "sparse", "--events", "200000")
    for task in ("cart", "fav", "buy"):
        assert dense["bayes_auc"][task] - dense["bound_auc"]["user"][task] < 0.015, task
        assert dense["bound_auc"]["user"][task] > dense["prior_only_auc"]["user"][task] + 0.03
        assert sparse["gap_to_bayes"][task] > 0.05, task
        assert sparse["bound"][task] > sparse["prior_only_auc"]["user"][task], task
