"""The engine's sparse path: id tables get sparse gradients and a lazy Adam, so a step moves only
the rows its batch looked up (the rest of a multi-million-row table is never touched), while
the model still learns; PCGrad on the parameters, which needs flat dense gradients, falls back
to dense tables.
Learning with the default (sparse) settings is covered for every model in test_model_zoo.py,
kill-and-resume in test_training_engine.py."""

from __future__ import annotations

from dataclasses import replace

import pandas as pd
import pytest
import torch

from shopguide.config import Params
from shopguide.metrics import task_metrics
from shopguide.model.base import _HASH, PooledDropout
from shopguide.model.fit import fit, predict, settings_from_params
from shopguide.model.optim import EngineOptimizer, one_thread, row_sparse
from shopguide.model.tensors import time_split, to_tensors
from shopguide.train import build_model
from tests.conftest import PipelineRun
from tests.test_model_zoo import small_params


def embedded_params(params: Params, model: str, **train: object) -> Params:
    """`small_params` with rows of their own for user, item and category ids (the default
    model embeds none: its table has one shared row per id kind)."""
    small = small_params(params, model, **train)
    ids = ("user", "item", "category")
    return small.model_copy(update={"model": small.model.model_copy(update={"id_embeddings": ids})})


def _train(run: PipelineRun, balancing: str, **train: object) -> tuple:
    """(table before, table after, test metrics, whether every table gradient was sparse,
    mask of the table rows that training ids hash to: the examples' own ids and the items and
    categories of their recent events)."""
    frame = pd.read_parquet(run.training_set)
    fit_part, valid_part = time_split(frame[frame["split"] == "train"], 0.15)
    test = frame[frame["split"] == "test"]
    params = embedded_params(run.params, "mmoe", max_epochs=2, loss_balancing=balancing, **train)
    torch.manual_seed(3)
    model = build_model(fit_part, params)
    tasks, dense = params.protocol.tasks, model.config
    settings = replace(settings_from_params(params.train, tasks), learning_rate=4e-3)
    before = model.encoders[0].embedding.weight.detach().clone()
    seen: list[bool] = []
    model.encoders[0].embedding.weight.register_hook(lambda g: seen.append(g.is_sparse))
    fit(model, to_tensors(fit_part, tasks, dense), to_tensors(valid_part, tasks, dense), settings)
    after = model.encoders[0].embedding.weight.detach()
    data = to_tensors(test, tasks, dense)
    metrics = task_metrics(data.labels.numpy(), predict(model, data), tasks)
    encoder, ids = model.encoders[0], to_tensors(fit_part, tasks, dense)
    index = (torch.stack([ids.user, ids.item, ids.category], 1) * _HASH) % encoder.sizes
    looked_up = torch.zeros(len(after), dtype=torch.bool)
    looked_up[(index + encoder.offsets).flatten()] = True
    events = ids.sequence[ids.sequence[..., 2] > 0]  # (events, 4): the filled slots
    seen_ids = torch.stack([events[:, 0], events[:, 1]], 1)  # their items and categories
    looked_up[((seen_ids * _HASH) % encoder.sizes[1:] + encoder.offsets[1:]).flatten()] = True
    return before, after, metrics, all(seen), looked_up


def test_sparse_tables_move_only_looked_up_rows(pipeline_run: PipelineRun) -> None:
    before, after, metrics, sparse, looked_up = _train(pipeline_run, "fixed")
    assert sparse
    moved = (before != after).any(dim=1)
    assert (~looked_up).sum() > 1000  # the small tables have rows no training id reaches
    assert not moved[~looked_up].any()  # lazy: never touched (dense AdamW would decay them)
    assert moved[looked_up].float().mean() > 0.99
    assert metrics["buy"]["auc"] > 0.6


def test_pcgrad_on_the_parameters_keeps_dense_tables(pipeline_run: PipelineRun) -> None:
    *_, sparse, _ = _train(pipeline_run, "pcgrad", pcgrad_space="parameters")
    assert not sparse


def test_pcgrad_on_the_shared_output_keeps_sparse_tables(pipeline_run: PipelineRun) -> None:
    *_, metrics, sparse, _ = _train(pipeline_run, "pcgrad")
    assert sparse
    assert metrics["buy"]["auc"] > 0.6


def test_whole_table_penalty_still_trains(pipeline_run: PipelineRun) -> None:
    """An extra loss over a whole table (as fine-tuning's L2-SP pull) makes its gradient dense;
    the sparse optimizer then updates every row instead of failing."""
    frame = pd.read_parquet(pipeline_run.training_set)
    fit_part, valid_part = time_split(frame[frame["split"] == "train"].head(8000), 0.15)
    params = embedded_params(pipeline_run.params, "shared_bottom", max_epochs=1)
    model = build_model(fit_part, params)
    tasks, dense = params.protocol.tasks, model.config
    before = model.encoders[0].embedding.weight.detach().clone()
    fit(
        model,
        to_tensors(fit_part, tasks, dense),
        to_tensors(valid_part, tasks, dense),
        settings_from_params(params.train, tasks),
        extra_loss=lambda m, batch, rep: 1e-3 * m.encoders[0].embedding.weight.pow(2).sum(),
    )
    moved = (before != model.encoders[0].embedding.weight.detach()).any(dim=1)
    assert moved.float().mean() > 0.99


def test_pooled_dropout_is_dropout() -> None:
    """Keep rate 1 - p, inverted scaling, identity in eval mode, reproducible under a seed."""
    layer = PooledDropout(0.25)
    x = torch.ones(512, 256)
    torch.manual_seed(1)
    y = layer(x)
    assert abs(float((y == 0).float().mean()) - 0.25) < 0.01
    assert torch.unique(y).tolist() == pytest.approx([0.0, 1 / 0.75])
    torch.manual_seed(1)
    assert torch.equal(layer(x), y)
    assert not torch.equal(layer(x), y)
    assert torch.equal(layer.eval()(x), x)


def test_row_sparse_is_to_sparse_by_rows() -> None:
    """The fast dense-to-row-sparse conversion (a whole-table penalty's gradient, gradients
    averaged across processes) keeps exactly the rows with a nonzero, as torch's own does."""
    grad = torch.randn(1000, 8)
    grad[torch.randperm(1000)[:900]] = 0.0
    grad[5, 3] = 0.0  # a row with some zeros stays
    fast, reference = row_sparse(grad), grad.to_sparse(sparse_dim=1).coalesce()
    assert fast.is_coalesced()
    assert torch.equal(fast.indices(), reference.indices())
    assert torch.equal(fast.values(), reference.values())
    assert fast.indices().shape[1] == 100
    assert torch.equal(row_sparse(torch.zeros(4, 2)).to_dense(), torch.zeros(4, 2))


def test_optimizer_steps_on_one_thread_and_gives_the_threads_back() -> None:
    """The optimizers' kernels run on one thread (cheaper for many small tensors) and the
    caller's thread count comes back, after an error too; the update is the one AdamW makes
    on all threads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with one_thread():
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        with pytest.raises(RuntimeError), one_thread():
            raise RuntimeError("step failed")
        assert torch.get_num_threads() == 2
        torch.manual_seed(0)
        weights = [torch.nn.Parameter(torch.randn(300, 70)) for _ in range(3)]
        twins = [torch.nn.Parameter(w.detach().clone()) for w in weights]
        start = weights[0].detach().clone()
        ours = EngineOptimizer(weights, [], 1e-2, 1e-4)
        reference = torch.optim.AdamW(twins, lr=1e-2, weight_decay=1e-4, fused=True)
        for _ in range(3):
            for w, t in zip(weights, twins, strict=True):
                w.grad = torch.sin(w.detach() * 7)
                t.grad = w.grad.clone()
            ours.step()
            reference.step()
            assert torch.get_num_threads() == 2
        assert all(torch.equal(w, t) for w, t in zip(weights, twins, strict=True))
        assert not torch.equal(weights[0], start)
    finally:
        torch.set_num_threads(threads)
