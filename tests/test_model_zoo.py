"""Every model of the zoo and every loss balancer learns on the real Taobao sample; models
round-trip through their saved JSON config; the model-specific pieces do what they claim."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import torch

from shopguide.config import Params
from shopguide.metrics import task_metrics
from shopguide.model.esmm import product_logit
from shopguide.model.fit import FitSettings, fit, predict, settings_from_params
from shopguide.model.store import load_model, save_model
from shopguide.model.tensor_factorised import FactorisedLayer
from shopguide.model.tensors import Tensors, time_split, to_tensors
from shopguide.model.zoo import MODELS, build, parse_config
from shopguide.train import build_model
from tests.conftest import PipelineRun

# Small enough that a model trains in seconds on 2 cores, big enough to learn.
SMALL_MODEL = {
    "embedding_dim": 8,
    "user_buckets": 5003,
    "item_buckets": 10007,
    "category_buckets": 1009,
    "num_experts": 3,
    "expert_hidden": (32,),
    "tower_hidden": (16,),
}

# A tiny saved model config as `save_model` writes it, without "kind" (models saved before it).
SAVED_CONFIG = {
    "tasks": ["cart"],
    "dense_features": ["a"],
    "dense_mean": [0.0],
    "dense_std": [1.0],
    "user_buckets": 5,
    "item_buckets": 5,
    "category_buckets": 5,
    "embedding_dim": 2,
    "expert_hidden": [4],
    "tower_hidden": [2],
    "dropout": 0.0,
}


def small_params(params: Params, model: str, **train: object) -> Params:
    return params.model_copy(
        update={
            "model": params.model.model_copy(update={"name": model, **SMALL_MODEL}),
            "train": params.train.model_copy(update={"max_epochs": 2, **train}),
        }
    )


@pytest.fixture(scope="module")
def splits(pipeline_run: PipelineRun) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    frame = pd.read_parquet(pipeline_run.training_set)
    fit_part, valid_part = time_split(frame[frame["split"] == "train"], 0.15)
    return fit_part, valid_part, frame[frame["split"] == "test"]


def train_and_score(params: Params, splits: tuple, checkpoint_dir: Path | None = None) -> tuple:
    fit_part, valid_part, test = splits
    torch.manual_seed(params.train.seed)
    model = build_model(fit_part, params)
    tasks, dense = params.protocol.tasks, model.config
    settings = replace(
        settings_from_params(params.train, tasks), batch_size=1024, learning_rate=4e-3
    )
    result = fit(
        model,
        to_tensors(fit_part, tasks, dense),
        to_tensors(valid_part, tasks, dense),
        settings,
        checkpoint_dir=checkpoint_dir,
    )
    data = to_tensors(test, tasks, dense)
    return model, result, task_metrics(data.labels.numpy(), predict(model, data), tasks), data


def assert_learns(metrics: dict) -> None:
    aucs = {t: m["auc"] for t, m in metrics.items()}
    assert sum(aucs.values()) / len(aucs) > 0.58, aucs
    assert min(aucs.values()) > 0.52, aucs


@pytest.mark.parametrize("name", list(MODELS))
def test_every_model_learns_and_round_trips(
    name: str, pipeline_run: PipelineRun, splits: tuple, tmp_path: Path
) -> None:
    model, _, metrics, data = train_and_score(small_params(pipeline_run.params, name), splits)
    assert_learns(metrics)
    save_model(model, tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert type(loaded) is type(model) and loaded.config == model.config
    assert torch.equal(loaded(*data.inputs()), model(*data.inputs()))
    shared = {id(p) for p in model.shared_parameters()}
    assert shared and len(shared) < len(list(model.parameters()))
    with torch.no_grad():
        representation = model.shared_representation(
            model.encode(*data.take(torch.arange(2)).inputs())
        )
    assert representation.shape[1] == model.shared_width()


BALANCERS = ("uncertainty", "gradnorm", "pcgrad", "dwa", "mgda_ub", "alternating")


@pytest.mark.parametrize(
    "balancing",
    [{"loss_balancing": b} for b in BALANCERS] + [{"warmup_epochs": 1, "warmup_task": "buy"}],
    ids=[*BALANCERS, "staged"],
)
def test_every_balancer_learns(balancing: dict, pipeline_run: PipelineRun, splits: tuple) -> None:
    params = small_params(pipeline_run.params, "shared_bottom", **balancing)
    _, result, metrics, _ = train_and_score(params, splits)
    assert_learns(metrics)
    assert result.samples == len(result.history) * len(splits[0])  # every row, every epoch
    weights = [[row[f"weight_{t}"] for t in params.protocol.tasks] for row in result.history]
    name, tasks = balancing.get("loss_balancing"), len(params.protocol.tasks)
    if name in ("uncertainty", "gradnorm", "dwa", "mgda_ub"):
        assert weights[-1] != weights[0], "the task weights never moved"
    if name in ("gradnorm", "dwa", "mgda_ub"):
        assert sum(weights[-1]) == pytest.approx(tasks, rel=1e-4)
    if name == "dwa":  # equal until two epochs have run
        assert weights[0] == [1.0] * tasks
    if name == "alternating":  # each task one step in `tasks`
        assert weights[-1] == pytest.approx([1 / tasks] * tasks)


def test_saved_mmoe_without_kind_still_loads() -> None:
    assert parse_config({**SAVED_CONFIG, "num_experts": 2}).kind == "mmoe"


def test_soft_sharing_saved_with_sharing_l2_still_loads() -> None:
    """Soft-sharing models saved before the penalty had a choice of norm carry `sharing_l2`:
    they load as the L2 penalty with that weight."""
    config = parse_config({**SAVED_CONFIG, "kind": "soft_sharing", "sharing_l2": 0.5})
    assert (config.sharing_weight, config.sharing_penalty) == (0.5, "l2")
    assert parse_config(config.model_dump()) == config


@pytest.mark.parametrize("name", ["mmoe", "esmm"])
def test_output_biases_start_at_the_training_base_rates(
    name: str, pipeline_run: PipelineRun, splits: tuple
) -> None:
    fit_part = splits[0]
    model = build_model(fit_part, small_params(pipeline_run.params, name))
    rates = fit_part[list(pipeline_run.params.protocol.tasks)].mean().to_numpy()
    assert model.config.base_rates == pytest.approx(rates)
    expected = rates.copy()
    if name == "esmm":  # a chained task's own output is p(child | parent), capped at 0.9
        tasks = list(pipeline_run.params.protocol.tasks)
        for child, parent in pipeline_run.params.model.chain.items():
            i, j = tasks.index(child), tasks.index(parent)
            expected[i] = min(rates[i] / rates[j], 0.9)
    assert torch.sigmoid(model.output.bias).detach().numpy() == pytest.approx(expected, rel=1e-4)
    assert model.output.dense is not None  # params.yaml: model.wide
    assert torch.count_nonzero(model.output.dense.weight) == 0  # starts as the prior alone


def test_narrow_models_and_configs_saved_before_output_layers(
    pipeline_run: PipelineRun, splits: tuple
) -> None:
    params = small_params(pipeline_run.params, "mmoe")
    narrow = params.model_copy(update={"model": params.model.model_copy(update={"wide": False})})
    model = build_model(splits[0], narrow)
    assert model.output is not None and model.output.dense is None
    old = build(model.config.model_copy(update={"base_rates": ()}))
    assert old.output is None
    assert not any(k.startswith("output.") for k in old.state_dict())


def test_esmm_chains_probabilities() -> None:
    parent, conditional = torch.randn(1000) * 4, torch.randn(1000) * 4
    chained = torch.sigmoid(product_logit(parent, conditional))
    expected = torch.sigmoid(parent) * torch.sigmoid(conditional)
    assert torch.allclose(chained, expected, atol=1e-5)


def test_soft_sharing_penalty_pulls_bottoms_together(pipeline_run: PipelineRun) -> None:
    frame = pd.read_parquet(pipeline_run.training_set).head(200)
    model = build_model(frame, small_params(pipeline_run.params, "soft_sharing"))
    logits = torch.zeros(1, 3)
    with torch.no_grad():
        assert model.penalty(logits).item() > 0
        for same in zip(*(b.parameters() for b in model.bottoms), strict=True):
            for p in same[1:]:
                p.copy_(same[0])
        assert model.penalty(logits).item() == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("penalty", ["l1", "trace_norm"])
def test_soft_sharing_l1_and_trace_norm_penalties(penalty: str, pipeline_run: PipelineRun) -> None:
    """l1: zero when every task's copy is the same; trace norm: equal copies stack into a
    rank-1 matrix whose nuclear norm is sqrt(tasks) times one copy's length, and independent
    copies (full rank) cost more."""
    frame = pd.read_parquet(pipeline_run.training_set).head(200)
    params = small_params(pipeline_run.params, "soft_sharing")
    model_params = params.model.model_copy(
        update={"sharing_penalty": penalty, "sharing_weight": 1.0}
    )
    model = build_model(frame, params.model_copy(update={"model": model_params}))
    logits, tasks = torch.zeros(1, 3), len(model.bottoms)
    with torch.no_grad():
        spread = model.penalty(logits).item()
        for same in zip(*(b.parameters() for b in model.bottoms), strict=True):
            for p in same[1:]:
                p.copy_(same[0])
        tied = model.penalty(logits).item()
        if penalty == "l1":
            assert spread > 0 and tied == pytest.approx(0.0, abs=1e-9)
        else:
            lengths = sum(p.norm().item() for p in model.bottoms[0].parameters())
            assert tied == pytest.approx(tasks**0.5 * lengths, rel=1e-4)
            # independent random copies are near orthogonal: about tasks (not sqrt) lengths
            assert spread > 1.5 * tied


def test_factorised_layer_gives_each_task_its_mix_of_the_bases() -> None:
    """A task's output is its own weights' layer, W_t = sum_k mix[t, k] basis[k], whether the
    input is shared (the first layer) or per task (later layers)."""
    torch.manual_seed(0)
    layer = FactorisedLayer(tasks=3, in_dim=5, out_dim=4, rank=2, dropout=0.0)
    x = torch.randn(7, 5)
    weights = torch.einsum("tk,kio->tio", layer.mix, layer.basis)
    expected = torch.relu(torch.einsum("bi,tio->tbo", x, weights) + layer.bias)
    assert torch.allclose(layer(x), expected, atol=1e-5)
    assert torch.allclose(layer(x.expand(3, 7, 5)), expected, atol=1e-5)


def test_each_category_its_own_task_layer(pipeline_run: PipelineRun, splits: tuple) -> None:
    """`model.category_task_buckets`: the model starts as the one without the layer (a row's
    scores do not depend on its category: no id embeddings), learns, and ends with scores
    that do, through each category's own layer alone."""
    params = small_params(pipeline_run.params, "mmoe")
    params = params.model_copy(
        update={"model": params.model.model_copy(update={"category_task_buckets": 1009})}
    )
    test = splits[2].head(500)
    other = test.assign(category_id=test["category_id"] + 1)
    tasks = params.protocol.tasks

    def scores(model: torch.nn.Module, frame: pd.DataFrame) -> torch.Tensor:
        return torch.from_numpy(predict(model, to_tensors(frame, tasks, model.config)))

    torch.manual_seed(params.train.seed)
    fresh = build_model(splits[0], params)
    assert torch.equal(scores(fresh, test), scores(fresh, other))
    model, _, metrics, _ = train_and_score(params, splits)
    assert_learns(metrics)
    assert not torch.allclose(scores(model, test), scores(model, other), atol=1e-4)
    table = model.encoders[0].category_task
    assert table is not None and table.weight.abs().sum() > 0
    # a batch of no rows (a category route with nothing to score) scores to no rows
    empty = to_tensors(test.head(0), tasks, model.config).inputs()
    assert model.outputs(*empty).shape == (0, sum(model.config.head_widths()))


def test_settings_reject_unknown_task_names(pipeline_run: PipelineRun) -> None:
    from shopguide.errors import ShopguideError

    train = pipeline_run.params.train.model_copy(update={"task_weights": {"rating": 2.0}})
    with pytest.raises(ShopguideError, match="rating"):
        settings_from_params(train, pipeline_run.params.protocol.tasks)


def test_fit_refuses_an_empty_run() -> None:
    from shopguide.errors import ShopguideError

    config = parse_config({**SAVED_CONFIG, "kind": "shared_bottom"})
    data = Tensors(
        *(torch.zeros(4, dtype=torch.long) for _ in range(3)),
        torch.zeros(4, 1),
        torch.zeros(4, 0, 4, dtype=torch.long),
        torch.tensor([[0.0], [1.0], [0.0], [1.0]]),
        torch.zeros(4, dtype=torch.long),
        torch.ones(4, dtype=torch.bool),
        torch.zeros(4, 0, dtype=torch.long),
        torch.zeros(4, 0, 0, dtype=torch.long),
    )
    settings = FitSettings(1e-3, 0.0, 0.0, 2, 0, 1, 0)
    with pytest.raises(ShopguideError, match="no epoch"):
        fit(build(config), data, data, settings)
