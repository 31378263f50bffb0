"""train, finetune, evaluate, gate and promote on the real sample."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import load_file

from shopguide.config import Params, load_params
from shopguide.errors import GateRefused, ShopguideError
from shopguide.evaluate import category_slices, checked_probabilities, evaluate_step, score_model
from shopguide.finetune import finetune_examples
from shopguide.gate import gate_step
from shopguide.held_out import HeldOut, category_counts
from shopguide.io import read_json
from shopguide.model.routed import Routed
from shopguide.model.store import load_model, save_model
from shopguide.model.tensors import is_new_category, to_tensors
from shopguide.promote import promote_step
from shopguide.registry import champion, versions
from shopguide.train import build_model, training_examples
from tests.conftest import PipelineRun, write_params


def test_trained_model_learns_every_task(pipeline_run: PipelineRun) -> None:
    metrics = read_json(pipeline_run.art("metrics/train.json"))
    for task in ("cart", "fav", "buy"):
        assert metrics["validation"][task]["auc"] > 0.55, task
        assert metrics["validation"][task]["logloss"] < 0.2
    history = pd.read_csv(pipeline_run.art("plots/train.csv"))
    selection = pipeline_run.params.train.selection  # the metric that picks the epoch
    assert {"epoch", "train_loss", f"val_mean_{selection}", f"val_buy_{selection}"} <= set(
        history.columns
    )


def test_model_is_safetensors_plus_json(pipeline_run: PipelineRun) -> None:
    files = {p.name for p in pipeline_run.pretrained.iterdir()}
    assert files == {"model.safetensors", "config.json"}
    config = json.loads((pipeline_run.pretrained / "config.json").read_text())
    assert config["tasks"] == list(pipeline_run.params.protocol.tasks)
    weights = load_file(str(pipeline_run.pretrained / "model.safetensors"))
    assert any(k.startswith("experts.") for k in weights)
    model = load_model(pipeline_run.pretrained)
    assert not model.training


def test_finetune_adapts_with_the_default_strategy_and_reports_before_after(
    pipeline_run: PipelineRun,
) -> None:
    """The pipeline's fine-tune step uses params.yaml's strategy (L2-SP): every layer may move,
    the shared ones included, and the step says which strategy made the candidate. Each
    strategy's own promise is tested in test_transfer.py."""
    assert pipeline_run.params.finetune.strategy == "l2sp"
    candidate = load_model(pipeline_run.candidate)
    assert isinstance(candidate, Routed)  # finetune.isolate: base and fine-tuned copy
    base, tuned = load_model(pipeline_run.pretrained), candidate.routed[0]
    kept = zip(base.parameters(), candidate.base.parameters(), strict=True)
    assert all(torch.equal(a, b) for a, b in kept)
    moved = {
        name.split(".")[0]
        for (name, a), b in zip(base.state_dict().items(), tuned.state_dict().values(), strict=True)
        if not torch.equal(a, b)
    }
    assert {"encoders", "experts", "towers"} <= moved
    report = read_json(pipeline_run.art("metrics/finetune.json"))
    assert report["strategy"] == report["chosen_strategy"] == "l2sp"
    assert report["routes"] == 1
    assert all(c == 0.0 for c in report["old_category_auc_change"].values()), report
    for task in ("cart", "fav", "buy"):
        assert report["new_category_test_before"][task]["auc"] is not None
        assert report["new_category_test_after"][task]["auc"] > 0.5


def test_finetune_reads_a_bounded_user_sample_of_each_side(pipeline_run: PipelineRun) -> None:
    """`finetune` reads the training set a row group at a time: with `finetune.new_rows` and
    `old_rows` above the rows there are it keeps the whole train split, as read whole; below,
    the rows of a sample of users, about that many, on each side."""
    params = pipeline_run.params
    whole = training_examples(pipeline_run.training_set, pipeline_run.ranking_set, params)
    whole = whole[whole["split"] == "train"].reset_index(drop=True)
    read = finetune_examples(pipeline_run.training_set, pipeline_run.ranking_set, params)
    pd.testing.assert_frame_equal(read, whole)
    new = is_new_category(whole["category_id"], params.finetune)
    for side, name in ((new, "new_rows"), (~new, "old_rows")):
        bound = int(side.sum()) // 4
        fewer = params.model_copy(
            update={"finetune": params.finetune.model_copy(update={name: bound})}
        )
        some = finetune_examples(pipeline_run.training_set, pipeline_run.ranking_set, fewer)
        some_new = is_new_category(some["category_id"], params.finetune).to_numpy()
        kept = some_new if name == "new_rows" else ~some_new
        assert 0.7 * bound < int(kept.sum()) < 1.3 * bound
        assert len(some) - int(kept.sum()) == int((~side).sum())  # the other side whole
        users = set(some.loc[kept, "user_id"])
        assert int((side & whole["user_id"].isin(users)).sum()) == int(kept.sum())  # whole users


def test_evaluation_has_slices_plots_and_report(pipeline_run: PipelineRun) -> None:
    ev = read_json(pipeline_run.evaluation)
    # the test exposures whose 3 h horizon ends before the data does, labelled within it
    exposures = 13_744
    assert ev["overall"]["buy"]["positives"] == 129
    assert ev["overall"]["cart"]["rows"] == exposures
    test = pd.read_parquet(pipeline_run.training_set, columns=["split"])
    entire_space = int((test["split"] == "test").sum())  # exposures and sampled items
    assert ev["overall"]["click"]["population"] == "entire_space"
    assert ev["overall"]["click"]["rows"] == entire_space > exposures
    old, new = ev["slices"]["old_categories"], ev["slices"]["new_categories"]
    assert old["cart"]["rows"] + new["cart"]["rows"] == exposures
    assert new["cart"]["rows"] == 4_218  # protocol taobao-transfer-v1
    groups = [ev["slices"][f"{g}_categories"]["cart"]["rows"] for g in ("head", "torso", "tail")]
    assert sum(groups) == exposures and all(groups)
    # The candidate's (routed: its base network's) experts, gate by gate: shares sum to one.
    health = ev["expert_health"]
    assert set(health["gates"]) == {"click", "cart", "fav", "buy"}
    assert all(abs(sum(g["share"]) - 1) < 1e-3 for g in health["gates"].values())
    for block in [ev["overall"], *ev["slices"].values()]:
        for task, m in block.items():
            for metric in ("auc", "logloss", "ece", "gauc"):
                if m[metric] is None:  # a slice without both outcomes for this task
                    continue
                ci = m[f"{metric}_ci"]
                assert 0 <= ci["low"] <= ci["high"], (task, metric, m)
                # Resampling adds noise to every bin, so a resampled calibration error is biased
                # upward and its percentile interval may sit just above a small point estimate.
                if metric != "ece":
                    assert ci["low"] <= m[metric] <= ci["high"], (task, metric, m)
    buy = ev["overall"]["buy"]
    assert 0 < buy["ece"] < 0.05 and 0 < buy["gauc"] < 1
    # what is served ranks the bought item well above chance within its query
    assert ev["ranking"]["overall"]["buy"]["served"]["auc"] > 0.6
    samples = pipeline_run.params.evaluation.bootstrap_samples
    assert ev["bootstrap"] == {"samples": samples, "confidence": 0.95, "seed": 7}
    tasks = set(pipeline_run.params.protocol.tasks)
    roc = pd.read_csv(pipeline_run.art("plots/roc.csv"))
    assert set(roc["task"]) == tasks
    calibration = pd.read_csv(pipeline_run.art("plots/calibration.csv"))
    assert set(calibration["task"]) == tasks
    rows = calibration.groupby("task")["rows"].sum()
    assert rows.drop("click").eq(exposures).all() and rows["click"] == entire_space
    html = pipeline_run.art("reports/evaluation.html").read_text()
    assert html.count("data:image/png;base64") == 2  # ROC and calibration
    for text in ("new_categories", "tail_categories", "GAUC", "ECE", "bootstrap"):
        assert text in html, text


def test_first_run_promoted_a_champion(pipeline_run: PipelineRun) -> None:
    decision = read_json(pipeline_run.decision)
    assert decision["passed"] and decision["champion"] is None
    # The gate served the candidate for real: same scores as offline, within the budget.
    rules = {c["rule"]: c for c in decision["checks"]}
    assert rules["serving_parity"]["passed"] and rules["serving_parity"]["value"] <= 1e-5
    assert rules["serving_p99_latency"]["passed"]
    assert decision["infra"]["requests"] == 40 and decision["infra"]["latency_ms"]["p99"] > 0
    current = champion(pipeline_run.registry)
    assert current is not None
    meta = current.metadata
    assert meta["gate"]["passed"] and meta["model_fingerprint"]
    assert (current.path / "MODEL_CARD.md").read_text().startswith("# Model card")
    assert meta["data_fingerprint"]["training_set"]
    assert meta["params"]["gate"]["auc_floor"] == pipeline_run.params.gate.auc_floor
    assert meta["metrics"]["overall"]["cart"]["auc"] == decision["candidate_auc"]["cart"]
    assert len(meta["git_commit"]) in (40, len("unknown"))
    isvc = yaml.safe_load(pipeline_run.params.deploy.output.read_text())
    assert isvc["kind"] == "InferenceService"
    assert isvc["metadata"]["labels"]["shopguide/model-version"] == current.name
    env = isvc["spec"]["predictor"]["containers"][0]["env"][0]
    assert env["value"].endswith(current.name)


def without_serving_check(params: Params) -> Params:
    """The gate's settings minus its serving check (tested in tests/test_gate.py), and a
    cheaper bootstrap for evaluations only the gate reads."""
    gate = params.gate.model_copy(
        update={"infra": params.gate.infra.model_copy(update={"enabled": False})}
    )
    evaluation = params.evaluation.model_copy(update={"bootstrap_samples": 50})
    return params.model_copy(update={"gate": gate, "evaluation": evaluation})


@pytest.fixture()
def untrained(pipeline_run: PipelineRun, tmp_path: Path) -> tuple[Path, Path]:
    """A random, untrained model and its evaluation: a candidate the gate must refuse."""
    frame = pd.read_parquet(pipeline_run.training_set)
    torch.manual_seed(0)
    model = build_model(frame, pipeline_run.params)
    save_model(model, tmp_path / "model")
    evaluation = tmp_path / "evaluate.json"
    evaluate_step(
        pipeline_run.training_set,
        pipeline_run.ranking_set,
        tmp_path / "model",
        evaluation,
        tmp_path / "roc.csv",
        tmp_path / "report.html",
        without_serving_check(pipeline_run.params),
    )
    return tmp_path / "model", evaluation


def test_gate_refuses_below_floor_and_promote_changes_nothing(
    pipeline_run: PipelineRun, untrained: tuple[Path, Path], tmp_path: Path
) -> None:
    model, evaluation = untrained
    before = [v.name for v in versions(pipeline_run.registry)]
    champ = champion(pipeline_run.registry).name
    decision = gate_step(
        evaluation,
        pipeline_run.training_set,
        pipeline_run.ranking_set,
        pipeline_run.registry,
        tmp_path / "decision.json",
        without_serving_check(pipeline_run.params),
    )
    assert not decision["passed"]
    assert decision["candidate"] == str(model.resolve())  # the model the evaluation names
    rules = {c["rule"] for c in decision["checks"] if not c["passed"]}
    assert rules >= {"auc_floor", "no_regression_vs_champion", "no_old_category_forgetting"}
    assert rules <= {
        "auc_floor",
        "gauc_floor",
        "ranking_auc_floor",
        "no_regression_vs_champion",
        "no_old_category_forgetting",
        "no_ranking_regression_vs_champion",
    }
    assert any("auc_floor" in r for r in decision["reasons"])
    with pytest.raises(GateRefused, match="refused the candidate; not promoted"):
        promote_step(
            model,
            tmp_path / "decision.json",
            evaluation,
            pipeline_run.training_set,
            tmp_path / "promotion.json",
            pipeline_run.params,
        )
    assert read_json(tmp_path / "promotion.json")["promoted"] is False
    assert [v.name for v in versions(pipeline_run.registry)] == before
    assert champion(pipeline_run.registry).name == champ


def test_gate_refuses_regression_against_champion(
    pipeline_run: PipelineRun, untrained: tuple[Path, Path], tmp_path: Path
) -> None:
    _, evaluation = untrained
    lenient = load_params(
        write_params(
            tmp_path,
            pipeline_run.params.data.raw_path,
            gate={
                "auc_floor": {"click": 0.0, "cart": 0.0, "fav": 0.0, "buy": 0.0},
                "gauc_floor": {},
                "ranking_auc_floor": None,
                "max_ranking_regression": 1.0,
            },
        )
    )
    lenient = without_serving_check(
        lenient.model_copy(update={"registry": pipeline_run.params.registry})
    )
    decision = gate_step(
        evaluation,
        pipeline_run.training_set,
        pipeline_run.ranking_set,
        pipeline_run.registry,
        tmp_path / "decision.json",
        lenient,
    )
    failed = [c for c in decision["checks"] if not c["passed"]]
    assert not decision["passed"]
    # An untrained model also forgets the old categories (tests/test_transfer.py for that rule).
    rules = {c["rule"] for c in failed}
    assert rules == {"no_regression_vs_champion", "no_old_category_forgetting"}
    failed = [c for c in failed if c["rule"] == "no_regression_vs_champion"]
    for check in failed:  # judged by the paired bootstrap, and explained
        assert check["judged"] and check["p_worse_than_tolerance"] >= 0.95
        # A refusal means P(delta < -tolerance) >= 0.95, so the interval's low end lies
        # below the tolerance; its high end may still cross 0.
        assert check["delta"] < -0.01 and check["delta_ci95"]["low"] < -0.01
    assert decision["champion"] == champion(pipeline_run.registry).name
    assert len(decision["reasons"]) == len(decision["checks"])


def test_gate_passes_the_champion_against_itself(pipeline_run: PipelineRun, tmp_path: Path) -> None:
    decision = gate_step(
        pipeline_run.evaluation,
        pipeline_run.training_set,
        pipeline_run.ranking_set,
        pipeline_run.registry,
        tmp_path / "d.json",
        without_serving_check(pipeline_run.params),
    )
    assert decision["passed"], decision["reasons"]
    for task, auc in decision["candidate_auc"].items():
        assert decision["champion_auc"][task] == pytest.approx(auc, abs=1e-9)
    judged = [c for c in decision["checks"] if c.get("judged")]
    assert judged and all(c["delta"] == 0 and c["p_worse_than_tolerance"] == 0 for c in judged)
    assert decision["not_checked"] == ["serving check (gate.infra.enabled is false)"]


def test_promote_without_decision_is_an_error(pipeline_run: PipelineRun, tmp_path: Path) -> None:
    with pytest.raises(ShopguideError, match="no gate decision"):
        promote_step(
            pipeline_run.candidate,
            tmp_path / "missing.json",
            pipeline_run.evaluation,
            pipeline_run.training_set,
            tmp_path / "p.json",
            pipeline_run.params,
        )


def _copy_registry(pipeline_run: PipelineRun, tmp_path: Path) -> Params:
    """The session's registry copied, and params pointing at the copy: promotions here must
    not move the champion other tests compare with."""
    registry = tmp_path / "registry"
    shutil.copytree(pipeline_run.registry, registry)
    p = without_serving_check(pipeline_run.params)
    return p.model_copy(update={"registry": p.registry.model_copy(update={"path": registry})})


def _promote(pipeline_run: PipelineRun, model: Path, decision: Path, tmp_path: Path, p: Params):
    return promote_step(
        model,
        decision,
        pipeline_run.evaluation,
        pipeline_run.training_set,
        tmp_path / "promotion.json",
        p,
        parent_dir=champion(p.registry.path).path,
    )


def test_promote_registers_only_what_the_gate_approved(
    pipeline_run: PipelineRun, untrained: tuple[Path, Path], tmp_path: Path
) -> None:
    """A passed decision binds the candidate's weights, the registry and the champion it was
    compared with: another model, another registry or a champion changed since are refused
    with nothing registered; the approved model is registered, its parent version named."""
    p = _copy_registry(pipeline_run, tmp_path)
    registry = p.registry.path
    decision = tmp_path / "decision.json"
    assert gate_step(
        pipeline_run.evaluation,
        pipeline_run.training_set,
        pipeline_run.ranking_set,
        registry,
        decision,
        p,
    )["passed"]
    before = [v.name for v in versions(registry)]
    with pytest.raises(ShopguideError, match="not the model the gate approved"):
        _promote(pipeline_run, untrained[0], decision, tmp_path, p)
    elsewhere = p.model_copy(update={"registry": p.registry.model_copy(update={"path": tmp_path})})
    with pytest.raises(ShopguideError, match="the gate compared against registry"):
        promote_step(
            pipeline_run.candidate,
            decision,
            pipeline_run.evaluation,
            pipeline_run.training_set,
            tmp_path / "promotion.json",
            elsewhere,
        )
    assert [v.name for v in versions(registry)] == before

    parent = champion(registry)
    record = _promote(pipeline_run, pipeline_run.candidate, decision, tmp_path, p)
    assert record["promoted"]
    # the champion was the fine-tuning base: lineage names its version
    assert champion(registry).metadata["parent_version"] == parent.name
    # the routed candidate is listed by its architecture and its count of fine-tuned copies
    assert (champion(registry).metadata["model"], champion(registry).metadata["routes"]) == (
        "mmoe",
        1,
    )
    card = (champion(registry).path / "MODEL_CARD.md").read_text()
    assert "mmoe with 1 fine-tuned copy (category_id % 3 == 0)" in card
    with pytest.raises(ShopguideError, match="the champion is now"):  # the decision is stale
        _promote(pipeline_run, pipeline_run.candidate, decision, tmp_path, p)
    assert len(versions(registry)) == len(before) + 1


def test_scoring_a_row_group_at_a_time_equals_scoring_the_whole_split(
    pipeline_run: PipelineRun,
) -> None:
    """`evaluate` and the gate score the test split part by part (`HeldOut`): the same rows,
    probabilities and slices as the whole table gives."""
    frame = pd.read_parquet(pipeline_run.training_set)
    test = frame[frame["split"] == "test"].reset_index(drop=True)
    held = HeldOut.of(pipeline_run.training_set)
    assert len({p.group for p in held.rows.parts if held.rows.rows[p.group]}) > 1
    model = load_model(pipeline_run.pretrained)
    scored = score_model(model, held, pipeline_run.params)
    np.testing.assert_allclose(scored.probs, checked_probabilities(model, test), atol=1e-6)
    np.testing.assert_array_equal(scored.users, test["user_id"].to_numpy())
    train = frame[(frame["split"] == "train") & ~frame["sampled"]]
    exposed = category_counts(train["category_id"])
    slices = category_slices(test["category_id"], exposed, pipeline_run.params)
    assert scored.slices.keys() == slices.keys()
    for name, mask in slices.items():
        np.testing.assert_array_equal(scored.slices[name], mask, err_msg=name)


def test_a_model_that_predicts_nan_is_an_error(pipeline_run: PipelineRun, tmp_path: Path) -> None:
    model = load_model(pipeline_run.pretrained)
    with torch.no_grad():
        next(model.towers.parameters()).fill_(float("nan"))
    save_model(model, tmp_path / "model")
    with pytest.raises(ShopguideError, match="non-finite probabilities"):
        evaluate_step(
            pipeline_run.training_set,
            pipeline_run.ranking_set,
            tmp_path / "model",
            tmp_path / "evaluate.json",
            tmp_path / "roc.csv",
            tmp_path / "report.html",
            pipeline_run.params,
        )
    assert not (tmp_path / "evaluate.json").exists()


def test_scoring_without_a_label_column_is_an_error(pipeline_run: PipelineRun) -> None:
    frame = pd.read_parquet(pipeline_run.training_set).drop(columns=["buy"])
    config = load_model(pipeline_run.pretrained).config
    with pytest.raises(ShopguideError, match=r"lacks columns \['buy'\]"):
        to_tensors(frame, ("cart", "fav", "buy"), config)


def test_training_without_a_feature_column_is_an_error(pipeline_run: PipelineRun) -> None:
    frame = pd.read_parquet(pipeline_run.training_set)
    column = load_model(pipeline_run.pretrained).config.dense_features[0]
    with pytest.raises(ShopguideError, match=f"lacks feature columns \\['{column}'\\]"):
        build_model(frame.drop(columns=[column]), pipeline_run.params)
