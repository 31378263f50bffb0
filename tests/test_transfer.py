"""Transfer to new categories on the real Taobao sample (protocol taobao-transfer-v1), starting
from the pipeline's pre-trained model: every strategy learns the new categories, each keeps its
own promise (frozen layers unchanged, L2-SP pulls toward the pre-trained weights, gradient
reversal, cold-start rows as documented, `auto` keeps the best validation score), and the gate
refuses a model that forgot the old categories."""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pandas as pd
import pytest
import torch

from shopguide.config import Params
from shopguide.errors import ShopguideError
from shopguide.evaluate import evaluate_step
from shopguide.finetune import finetune_base, finetune_step
from shopguide.gate import gate_step
from shopguide.io import read_json
from shopguide.metrics import mean_metric
from shopguide.model.base import MultiTaskModel
from shopguide.model.fit import predict
from shopguide.model.routed import CategoryRule, Routed, split_routes
from shopguide.model.store import load_model, save_model
from shopguide.model.tensors import is_new_category, read_training_set
from shopguide.registry import champion, register
from shopguide.train import build_model
from shopguide.transfer import STRATEGIES, Adapted, adapt, choose, transfer_data
from shopguide.transfer.adversarial import reverse_gradient
from shopguide.transfer.alignment import coral, mmd
from shopguide.transfer.coldstart import initial_rows
from shopguide.transfer.common import fit_rows, frame_metrics, tensors
from shopguide.transfer.l2sp import L2SP
from shopguide.transfer.meta import meta_initialise
from tests.conftest import PipelineRun


def _with(params: Params, section: str, **values: object) -> Params:
    return params.model_copy(update={section: getattr(params, section).model_copy(update=values)})


@pytest.fixture(scope="module")
def frame(pipeline_run: PipelineRun) -> pd.DataFrame:
    return read_training_set(pipeline_run.training_set)


@pytest.fixture(scope="module")
def new_test(frame: pd.DataFrame, pipeline_run: PipelineRun) -> pd.DataFrame:
    test = frame[frame["split"] == "test"]
    return test[is_new_category(test["category_id"], pipeline_run.params.finetune)]


@pytest.fixture(scope="module")
def registry(pipeline_run: PipelineRun, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registry whose champion is the pipeline's fine-tuned candidate (registered here, so
    these tests do not depend on the pipeline's own gate passing on a busy machine)."""
    root = tmp_path_factory.mktemp("transfer") / "registry"
    register(root, pipeline_run.candidate, {"note": "champion for tests/test_transfer.py"})
    return root


def short(params: Params) -> Params:
    """Fine-tuning of one epoch from the pre-trained model (what `runs` and the `auto` test
    train with): enough for each strategy to show what it does to the weights and that it
    learns the new categories."""
    return _with(params, "finetune", max_epochs=1)


@pytest.fixture(scope="module")
def runs(pipeline_run: PipelineRun, frame: pd.DataFrame) -> dict[str, Adapted]:
    """Each strategy once, from the same pre-trained model, on the whole new-category budget."""
    params = short(pipeline_run.params)
    data = transfer_data(frame, params)
    base = load_model(pipeline_run.pretrained)
    return {n: adapt(copy.deepcopy(base), data, params, n) for n in STRATEGIES}


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_every_strategy_learns_the_new_categories(
    runs: dict[str, Adapted], new_test: pd.DataFrame, name: str
) -> None:
    metrics = frame_metrics(runs[name].model, new_test)
    assert mean_metric(metrics) > 0.6, metrics
    # fav has a dozen new-category test positives in 3 h: too few to judge alone
    assert all(metrics[t]["auc"] > 0.5 for t in ("click", "cart", "buy")), metrics
    assert runs[name].strategy == name and runs[name].outcome.result.best_epoch >= 0


def _changed(a: MultiTaskModel, b: MultiTaskModel) -> dict[str, bool]:
    other = dict(b.named_parameters())
    return {k: not torch.equal(p, other[k]) for k, p in a.named_parameters()}


def test_frozen_keeps_shared_layers(runs: dict[str, Adapted], pipeline_run: PipelineRun) -> None:
    base = load_model(pipeline_run.pretrained)
    changed = _changed(runs["frozen"].tuned, base)
    shared = {
        k for k, p in base.named_parameters() if any(p is q for q in base.shared_parameters())
    }
    assert shared and not any(changed[k] for k in shared)
    assert any(changed[k] for k in changed if k.startswith("towers"))
    assert runs["frozen"].outcome.trainable == sum(
        p.numel() for k, p in base.named_parameters() if k not in shared
    )
    # Frozen for the run (no gradient computed or kept for them), trainable again after it.
    adapted = runs["frozen"].tuned
    assert all(p.grad is None and p.requires_grad for p in adapted.shared_parameters())


def test_full_strategies_move_the_shared_layers(
    runs: dict[str, Adapted], pipeline_run: PipelineRun
) -> None:
    base = load_model(pipeline_run.pretrained)
    for name in ("l2sp", "adversarial", "mmd", "coral", "meta"):
        changed = _changed(runs[name].tuned, base)
        assert changed["experts.0.0.weight"] and changed["encoders.0.embedding.weight"], name


def test_l2sp_pulls_toward_the_pretrained_weights(
    pipeline_run: PipelineRun, frame: pd.DataFrame
) -> None:
    """Same run with lambda = 0 and lambda > 0: the penalty keeps the weights closer."""
    params = _with(
        pipeline_run.params, "finetune", max_epochs=1, full_learning_rate=1e-3, isolate=False
    )
    data = transfer_data(frame, params)
    distance = {}
    for lam in (0.0, 1.0):
        base = load_model(pipeline_run.pretrained)
        anchor = L2SP(base, lam)
        adapt(base, data, _with(params, "finetune", l2sp_lambda=lam), "l2sp")
        distance[lam] = float(anchor.distance().detach())
    assert 0 < distance[1.0] < 0.5 * distance[0.0], distance


def test_isolation_keeps_the_old_categories_scores(
    runs: dict[str, Adapted], pipeline_run: PipelineRun, frame: pd.DataFrame
) -> None:
    """`finetune.isolate` (the default): each strategy's candidate scores the old categories
    exactly as the pre-trained model, and the new ones as the network the strategy tuned."""
    assert pipeline_run.params.finetune.isolate
    base = load_model(pipeline_run.pretrained)
    test = frame[frame["split"] == "test"]
    new = is_new_category(test["category_id"], pipeline_run.params.finetune).to_numpy()
    data = tensors(base, test)
    before = predict(base, data)
    for name, run in runs.items():
        assert isinstance(run.model, Routed) and run.model.routed[0] is run.tuned, name
        after = predict(run.model, data)
        assert np.array_equal(after[~new], before[~new]), name
        assert np.allclose(after[new], predict(run.tuned, data)[new], rtol=0, atol=1e-6), name
        assert not np.array_equal(after[new], before[new]), name
        assert run.old_validation_drop[name] == 0.0, name


def test_a_routed_champion_fine_tuned_again_keeps_its_routes(
    runs: dict[str, Adapted], pipeline_run: PipelineRun, frame: pd.DataFrame
) -> None:
    """Fine-tuning a routed model for other categories adds a route: the earlier route's
    categories and every other old category keep their scores."""
    routed = runs["frozen"].model
    train = frame[frame["split"] == "train"]
    old = train[~is_new_category(train["category_id"], pipeline_run.params.finetune)]
    busiest = old["category_id"].value_counts().index[:40]
    params = _with(
        pipeline_run.params, "finetune", new_category_ids=tuple(map(int, busiest)), max_epochs=1
    )
    again = adapt(copy.deepcopy(routed), transfer_data(frame, params), params, "frozen")
    assert isinstance(again.model, Routed) and len(again.model.routed) == 2
    assert again.model.rules[1] == CategoryRule(ids=params.finetune.new_category_ids)
    test = frame[frame["split"] == "test"]
    data = tensors(routed, test)
    moved = test["category_id"].isin(busiest).to_numpy()
    before, after = predict(routed, data), predict(again.model, data)
    assert np.array_equal(after[~moved], before[~moved])
    assert not np.array_equal(after[moved], before[moved])


def test_fine_tuning_the_same_categories_again_continues_from_their_copy(
    runs: dict[str, Adapted], pipeline_run: PipelineRun, frame: pd.DataFrame
) -> None:
    """The same rule again replaces its route, starting from its copy (here: the L2-SP copy's
    moved shared layers, which `frozen` keeps); `isolate: false` on a routed model is refused,
    as only its base would adapt."""
    routed = runs["l2sp"].model
    params = _with(pipeline_run.params, "finetune", max_epochs=1)
    data = transfer_data(frame, params)
    again = adapt(copy.deepcopy(routed), data, params, "frozen")
    assert len(again.model.routed) == 1 and again.model.routed[0] is again.tuned
    earlier = dict(runs["l2sp"].tuned.named_parameters())
    shared = {id(p) for p in again.tuned.shared_parameters()}
    for name, p in again.tuned.named_parameters():
        if id(p) in shared:
            assert torch.equal(p, earlier[name]), name
    with pytest.raises(ShopguideError, match=r"1 fine-tuned copy .*finetune.isolate: true"):
        adapt(copy.deepcopy(routed), data, _with(params, "finetune", isolate=False), "frozen")


def test_gradient_reversal_flips_the_sign() -> None:
    x = torch.randn(5, 3, requires_grad=True)
    g = torch.randn(5, 3)
    y = reverse_gradient(x, 0.3)
    assert torch.equal(y, x)
    (y * g).sum().backward()
    assert torch.allclose(x.grad, -0.3 * g)


def test_coldstart_rows_are_the_documented_means(
    pipeline_run: PipelineRun, frame: pd.DataFrame
) -> None:
    """A new category's row is the mean of the old categories' rows weighted by shared users;
    rows that old exposures use never move. On a model whose ids have rows of their own
    (`model.id_embeddings`; the default embeds none, and cold-start then has no row to set)."""
    params = _with(pipeline_run.params, "model", id_embeddings=("user", "item", "category"))
    params = _with(params, "finetune", max_epochs=1)
    data = transfer_data(frame, params)
    torch.manual_seed(0)
    base = build_model(data.old, params)
    encoder = base.encoders[0]
    rows, values = initial_rows(encoder, data.old, data.unlabelled)
    table = encoder.embedding.weight.detach()

    def row(column: int, key: int) -> int:
        ids = [torch.zeros(1, dtype=torch.int64)] * 3
        ids[column] = torch.tensor([key])
        return int(encoder.rows(*ids)[0, column])

    # the busiest new category, recomputed from the exposures by hand
    category = int(data.unlabelled["category_id"].value_counts().index[0])
    users = set(data.unlabelled.loc[data.unlabelled["category_id"] == category, "user_id"])
    shared = (
        data.old[data.old["user_id"].isin(users)]
        .drop_duplicates(["category_id", "user_id"])["category_id"]
        .value_counts()
    )
    expected = sum(w * table[row(2, int(c))] for c, w in shared.items()) / shared.sum()
    position = int(np.searchsorted(rows, row(2, category)))
    assert rows[position] == row(2, category)
    assert torch.allclose(torch.from_numpy(values[position]), expected, atol=1e-6)
    assert not torch.allclose(expected, table[row(2, category)], atol=1e-3)  # not the random row

    tuned = adapt(copy.deepcopy(base), data, params, "coldstart").tuned
    adapted = tuned.encoders[0].embedding.weight.detach()
    old_rows = torch.from_numpy(
        np.unique(
            np.concatenate(
                [
                    [row(c, int(k)) for k in data.old[key].unique()]
                    for c, key in enumerate(("user_id", "item_id", "category_id"))
                ]
            )
        )
    )
    assert torch.equal(adapted[old_rows], table[old_rows])
    assert not torch.equal(adapted[torch.from_numpy(rows)], table[torch.from_numpy(rows)])


def test_auto_never_picks_a_strategy_that_forgets() -> None:
    validation = {"frozen": 0.62, "l2sp": 0.70, "coldstart": 0.65}
    drops = {"frozen": 0.0, "l2sp": 0.03, "coldstart": 0.004}
    assert choose(validation, drops, 0.01) == "coldstart"
    assert choose(validation, drops, 0.05) == "l2sp"
    assert choose(validation, drops, 0.001) == "frozen"
    assert choose(validation, {"frozen": 0.2, "l2sp": 0.03, "coldstart": 0.1}, 0.01) == "l2sp"


def test_replay_mixes_old_exposures(pipeline_run: PipelineRun, frame: pd.DataFrame) -> None:
    params = _with(pipeline_run.params, "finetune", replay_ratio=0.5)
    data = transfer_data(frame, params)
    rows = fit_rows(data, params)
    new = is_new_category(rows["category_id"], params.finetune)
    assert int(new.sum()) == len(data.fit) and int((~new).sum()) == len(data.fit) // 2
    # never the rows the forgetting check scores
    assert not rows.index.isin(data.old_valid.index).any()


def test_auto_keeps_the_best_validation_score(
    pipeline_run: PipelineRun, runs: dict[str, Adapted], tmp_path: Path
) -> None:
    """`finetune.strategy: auto` through the step: every strategy's validation score recorded
    (equal to its own run's), the best one kept and saved."""
    # two of the strategies (every one is in `runs`): enough to test the choice
    params = _with(
        short(pipeline_run.params), "finetune", strategy="auto", auto_strategies=("frozen", "coral")
    )
    metrics = finetune_step(
        pipeline_run.training_set,
        pipeline_run.pretrained,
        tmp_path / "model",
        tmp_path / "finetune.json",
        tmp_path / "history.csv",
        params,
    )
    scores, drops = metrics["validation_mean_auc"], metrics["old_category_validation_drop"]
    tried = params.finetune.auto_strategies
    assert scores == pytest.approx({n: runs[n].validation[n] for n in tried}, abs=1e-9)
    tolerance = params.gate.max_old_category_drop
    kept = {n: s for n, s in scores.items() if drops[n] <= tolerance} or None
    assert metrics["chosen_strategy"] == (
        max(kept, key=kept.get) if kept else min(drops, key=drops.get)
    )
    assert read_json(tmp_path / "finetune.json")["chosen_strategy"] == metrics["chosen_strategy"]
    saved = load_model(tmp_path / "model")
    assert not any(_changed(saved, runs[metrics["chosen_strategy"]].model).values())
    assert set(metrics["old_category_auc_change"]) == set(params.protocol.tasks)


def test_finetune_starts_from_the_champion(
    pipeline_run: PipelineRun, registry: Path, tmp_path: Path
) -> None:
    current = champion(registry)
    assert current is not None
    assert finetune_base(registry, pipeline_run.pretrained) == current.path
    assert finetune_base(tmp_path / "empty", pipeline_run.pretrained) == pipeline_run.pretrained
    assert finetune_base(registry, pipeline_run.pretrained, "pretrained") == pipeline_run.pretrained


def _gate(
    pipeline_run: PipelineRun, registry: Path, model: MultiTaskModel, tmp_path: Path, name: str
) -> dict:
    directory = tmp_path / name
    save_model(model, directory)
    params = _with(
        pipeline_run.params,
        "gate",
        infra=pipeline_run.params.gate.infra.model_copy(update={"enabled": False}),
        bootstrap_samples=100,
    )
    params = _with(params, "evaluation", bootstrap_samples=20)
    evaluation = tmp_path / f"{name}-evaluate.json"
    evaluate_step(
        pipeline_run.training_set,
        pipeline_run.ranking_set,
        directory,
        evaluation,
        tmp_path / f"{name}-roc.csv",
        tmp_path / f"{name}-report.html",
        params,
    )
    return gate_step(
        evaluation,
        pipeline_run.training_set,
        pipeline_run.ranking_set,
        registry,
        tmp_path / f"{name}.json",
        params,
        model_dir=directory,
    )


def _forgetting(decision: dict) -> dict[str, dict]:
    return {c["task"]: c for c in decision["checks"] if c["rule"] == "no_old_category_forgetting"}


def test_gate_refuses_a_model_that_forgot(
    pipeline_run: PipelineRun, registry: Path, tmp_path: Path
) -> None:
    """The champion with noise on its shared experts forgets the old categories: refused, and
    the decision says so; the champion with only new-category rows changed passes."""
    current = champion(registry)
    forgot = load_model(current.path)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # the base model: what scores the old categories
        for p in split_routes(forgot)[0].experts.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 3 * p.std())
    decision = _gate(pipeline_run, registry, forgot, tmp_path, "forgot")
    checks = _forgetting(decision)
    assert not decision["passed"]
    assert set(checks) == set(pipeline_run.params.protocol.tasks)
    refused = [c for c in checks.values() if not c["passed"]]
    assert refused and all(
        c["drop"] > pipeline_run.params.gate.max_old_category_drop for c in refused
    )
    assert any(r.startswith("no_old_category_forgetting") and ">" in r for r in decision["reasons"])

    kept = load_model(current.path)
    frame = read_training_set(pipeline_run.training_set)
    new = is_new_category(frame["category_id"], pipeline_run.params.finetune)
    encoder = split_routes(kept)[0].encoders[0]

    def category_rows(part: pd.DataFrame) -> np.ndarray:
        ids = torch.from_numpy(part[["user_id", "item_id", "category_id"]].to_numpy().T.copy())
        return encoder.rows(*ids)[:, 2].unique().numpy()

    rows = np.setdiff1d(category_rows(frame[new]), category_rows(frame[~new]))
    with torch.no_grad():
        encoder.embedding.weight[torch.from_numpy(rows)] += 0.5
    decision = _gate(pipeline_run, registry, kept, tmp_path, "kept")
    checks = _forgetting(decision)
    assert all(c["passed"] and c["drop"] == 0 for c in checks.values()), checks


def _transfer_benchmark() -> ModuleType:
    path = Path(__file__).resolve().parents[1] / "benchmarks/transfer_curve.py"
    spec = importlib.util.spec_from_file_location("transfer_curve", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_transfer_benchmark_refuses_a_workdir_built_with_other_params(tmp_path: Path) -> None:
    bench = _transfer_benchmark()
    params = Params()
    (tmp_path / "training_set.parquet").write_bytes(b"cached")
    (tmp_path / "params.json").write_text(json.dumps(params.model_dump(mode="json")))
    assert bench.prepare("synthetic", tmp_path, params) == tmp_path / "training_set.parquet"
    other = _with(params, "synth", category_factor_dim=1)
    with pytest.raises(SystemExit, match="built and cached with other params"):
        bench.prepare("synthetic", tmp_path, other)


def test_transfer_benchmark_folds_make_every_category_new_once(frame: pd.DataFrame) -> None:
    bench = _transfer_benchmark()
    params = Params()
    folds = range(params.finetune.new_category_modulo)
    new = [
        is_new_category(frame["category_id"], bench.with_fold(params, f).finetune) for f in folds
    ]
    assert (sum(n.astype(int) for n in new) == 1).all() and all(n.any() for n in new)
    names = [bench.fold_name("taobao", params, f) for f in folds]
    assert names == ["taobao", "taobao-fold1", "taobao-fold2"]


@pytest.mark.parametrize(
    ("folds", "message"),
    [
        ("0,3", "--folds: remainders of category_id % 3 run from 0 to 2"),
        ("0,x", "argument --folds: not integers separated by commas: '0,x'"),
    ],
)
def test_transfer_benchmark_refuses_folds_outside_the_rule(
    tmp_path: Path,
    folds: str,
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The script's own `main` (in this process: the refusal comes before anything is read or
    written, and a subprocess would spend its time importing)."""
    bench = _transfer_benchmark()
    argv = ["transfer_curve.py", "--folds", folds, "--workdir", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", [*argv, "--results", str(tmp_path)])
    with pytest.raises(SystemExit) as exited:
        bench.main()
    assert exited.value.code == 2
    assert message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_transfer_benchmark_targets_are_paired_gaps_to_scratch(
    frame: pd.DataFrame, new_test: pd.DataFrame, pipeline_run: PipelineRun
) -> None:
    """benchmarks/transfer_curve.py's target check on the real test split: a strategy whose
    scores carry the labels beats scratch's noise, with a paired interval above zero; `auto`
    is what the choice on validation picked, and a target it misses reads as not met."""
    bench = _transfer_benchmark()
    p, tasks = pipeline_run.params, pipeline_run.params.protocol.tasks
    labels = new_test[list(tasks)].to_numpy(np.float64)
    rng = np.random.default_rng(0)
    seeds = [1, 2]

    def run(signal: float, validation: float) -> dict:
        probs = signal * labels + rng.random(labels.shape)
        return {"new_probs": probs.tolist(), "validation": validation, "old_validation_drop": 0}

    runs = {
        f"{s}/{b:g}": {
            "scratch": run(0.0, 0.0),
            **{m: run(2.0 if m == "coldstart" else 0.0, 0.6) for m in STRATEGIES},
            "l2sp": run(0.0, 0.9),  # auto picks it on validation: noise on test
        }
        for s in seeds
        for b in bench.BUDGETS
    }
    bench.pick_auto(runs, p, seeds)
    checks = bench.targets("taobao", runs, frame, p, seeds, 200)
    rows = [row for row, _ in checks]
    assert {(r["task"], r["budget_percent"], r["pick"]) for r in rows} == {
        (t, b, k) for t in ("cart", "buy") for b in (10, 25, 50, 100) for k in ("best", "auto")
    }
    for r in rows:
        if r["pick"] == "best":
            assert r["method"] == "coldstart" and r["met"] and r["gap_low"] > 0.1, r
        else:
            assert r["method"] == "auto" and r["gap_low"] < 0 < r["gap_high"], r
    assert not all(r["met"] for r in rows if r["pick"] == "auto")
    synthetic = [row for row, _ in bench.targets("synthetic", runs, frame, p, seeds, 50)]
    assert {r["reference"] for r in synthetic} == {"scratch at 100%"}
    assert {r["budget_percent"] for r in synthetic} == {25} and len(synthetic) == 2 * len(tasks)
    assert "| no |" in bench.targets_markdown(rows) and "| yes |" in bench.targets_markdown(rows)

    # pooled over folds: the mean of the folds' gaps, its interval from their draws together
    noise = [
        (dict(row, gap=-0.01, met=False), rng.normal(-0.01, 0.001, len(draws)))
        for row, draws in checks
    ]
    pooled = bench.pooled_targets("taobao", {0: checks, 1: noise})
    assert [(r["task"], r["budget_percent"], r["pick"]) for r in pooled] == [
        (r["task"], r["budget_percent"], r["pick"]) for r in rows
    ]
    for r, (row, _) in zip(pooled, checks, strict=True):
        assert r["gap"] == pytest.approx((row["gap"] - 0.01) / 2)
        assert r["folds"]["1"]["gap"] == -0.01 and r["folds"]["0"]["method"] == row["method"]
        assert r["gap_low"] <= r["gap"] <= r["gap_high"]
        assert r["gap_high"] - r["gap_low"] < row["gap_high"] - row["gap_low"]
        assert r["met"] == (r["gap"] > 0)
    assert any(r["met"] for r in pooled) and not all(r["met"] for r in pooled)
    assert "(coldstart)" in bench.pooled_markdown(pooled)


def test_alignment_distances_see_a_shift_and_a_spread() -> None:
    """MMD is near zero between two samples of one distribution and large between shifted
    ones; CORAL is zero for equal covariances whatever the means, positive for a spread."""
    generator = torch.Generator().manual_seed(0)
    a, b = (torch.randn(400, 8, generator=generator) for _ in range(2))
    assert abs(mmd(a, b).item()) < 0.02 < 0.5 < mmd(a, b + 2.0).item()
    assert coral(a, a + 5.0).item() == pytest.approx(0.0, abs=1e-9)
    assert coral(a, 3.0 * b).item() > 10 * coral(a, b).item()


def test_alignment_strategies_bring_the_domains_together(
    pipeline_run: PipelineRun, frame: pd.DataFrame
) -> None:
    """One epoch of each (half the labelled budget) from the same pre-trained weights,
    without and with a strong penalty: the penalised run ends with the old and new
    categories' shared representations closer by its own distance, measured on the same
    2,000 rows of each."""
    params = _with(pipeline_run.params, "finetune", max_epochs=1, isolate=False, replay_ratio=1.0)
    data = transfer_data(frame, params, budget=0.5)
    base = load_model(pipeline_run.pretrained)
    # On the sample the old and new categories' representations barely differ (MMD about
    # 0): the new side is made the busiest tenth of users' rows, a shift to align.
    busiest = data.unlabelled.nlargest(len(data.unlabelled) // 10, base.config.dense_features[0])
    data = dataclasses.replace(data, unlabelled=busiest)
    old, new = tensors(base, data.old), tensors(base, data.unlabelled)
    rows = [
        torch.randperm(len(d), generator=torch.Generator().manual_seed(0))[:2000]
        for d in (old, new)
    ]

    def distances(model: MultiTaskModel) -> dict[str, float]:
        model.eval()
        with torch.no_grad():
            a, b = (
                model.shared_representation(model.encode(*d.take(r).inputs()))
                for d, r in zip((old, new), rows, strict=True)
            )
        return {"mmd": mmd(a, b).item(), "coral": coral(a, b).item()}

    free = load_model(pipeline_run.pretrained)
    adapt(free, data, _with(params, "finetune", mmd_weight=0.0), "mmd")
    unaligned = distances(free)
    for name, weight in (("mmd", 100.0), ("coral", 1e5)):
        model = load_model(pipeline_run.pretrained)
        adapt(model, data, _with(params, "finetune", **{f"{name}_weight": weight}), name)
        assert unaligned[name] > 0 and distances(model)[name] < 0.5 * unaligned[name], (
            name,
            unaligned,
        )


def test_meta_initialisation_moves_part_way_to_each_categorys_steps(
    pipeline_run: PipelineRun, frame: pd.DataFrame
) -> None:
    """One Reptile iteration with step size 1 ends where the inner steps ended; with 0.5, half
    way there from the same start (same category, batches and dropout)."""
    data = transfer_data(frame, pipeline_run.params)
    start = load_model(pipeline_run.pretrained)
    moved = {}
    for size in (1.0, 0.5):
        params = _with(pipeline_run.params, "finetune", meta_iterations=1, meta_step_size=size)
        model = copy.deepcopy(start)
        torch.manual_seed(0)
        drawn, samples = meta_initialise(model, data, params)
        moved[size] = torch.cat(
            [
                (p - q).detach().flatten()
                for p, q in zip(model.parameters(), start.parameters(), strict=True)
            ]
        )
    sizes = data.old["category_id"].value_counts()
    assert drawn == int((sizes >= 32).sum()) > 0
    batch = params.train.batch_size  # one iteration: meta_inner_steps batches of one category
    assert 0 < samples <= params.finetune.meta_inner_steps * batch
    assert moved[1.0].abs().max() > 0
    assert torch.allclose(moved[0.5], 0.5 * moved[1.0], atol=1e-6)


def test_transfer_benchmark_efficiency_is_the_first_budget_reaching_scratchs_full_auc() -> None:
    def row(method: str, budget: int, auc: float, seconds: float) -> dict:
        return {"task": "buy", "method": method, "budget_percent": budget, "auc": auc,
                "seconds": seconds, "samples": seconds * 1000}  # fmt: skip

    rows = [
        row("scratch", 25, 0.60, 5.0),
        row("scratch", 100, 0.70, 20.0),
        row("l2sp", 25, 0.69, 4.0),
        row("l2sp", 50, 0.71, 6.0),
        row("l2sp", 100, 0.75, 12.0),
        row("frozen", 100, 0.65, 3.0),
    ]
    found = {r["method"]: r for r in _transfer_benchmark().efficiency(rows)}
    assert (found["l2sp"]["budget_percent"], found["l2sp"]["seconds"]) == (50, 6.0)
    assert found["l2sp"]["samples"] == 6000.0 and found["l2sp"]["goal_samples"] == 20000.0
    assert found["frozen"]["budget_percent"] is None and found["frozen"]["seconds"] is None
    assert found["frozen"]["samples"] is None
    assert found["scratch"]["budget_percent"] == 100
    assert found["l2sp"]["goal_auc"] == 0.70 and found["l2sp"]["goal_seconds"] == 20.0
