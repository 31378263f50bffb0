"""What every strategy shares: the fine-tuning run through the project's training engine, with
old-category replay and no decay toward zero (freezing or L2-SP is the regulariser)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
from torch import nn

from shopguide.config import Params
from shopguide.metrics import task_metrics, task_populations
from shopguide.model.base import MultiTaskModel
from shopguide.model.fit import ExtraLoss, FitResult, fit, predict, settings_from_params
from shopguide.model.tensors import Tensors, exposures_of, to_tensors
from shopguide.transfer.data import TransferData


@dataclass
class Outcome:
    result: FitResult
    trainable: int  # parameters the strategy let move
    samples: int = 0  # rows the strategy processed: the fine-tuning's, plus its own passes


def tensors(model: MultiTaskModel, frame: pd.DataFrame, group_s: int = 0) -> Tensors:
    """`frame` as the model's inputs, with a label column for each of its heads."""
    return to_tensors(frame, model.config.head_names(), model.config, group_s)


def frame_metrics(model: MultiTaskModel, frame: pd.DataFrame) -> dict:
    """Per-task AUC and log loss of `model` on the rows of `frame` each task is judged on
    (`shopguide.metrics.task_populations`)."""
    data, tasks = tensors(model, frame), model.config.tasks
    labels = data.labels.numpy()[:, : len(tasks)]
    return judged_metrics(labels, predict(model, data), exposures_of(frame), tasks)


def judged_metrics(
    labels: np.ndarray, probs: np.ndarray, exposures: np.ndarray, tasks: tuple[str, ...]
) -> dict:
    """`task_metrics` of each task on the rows it is judged on (`task_populations`)."""
    labels = labels.copy()
    for j, rows in enumerate(task_populations(labels, exposures, tasks).values()):
        labels[~rows, j] = np.nan
    return task_metrics(labels, probs, tasks)


def fit_rows(data: TransferData, params: Params) -> pd.DataFrame:
    """The labelled new-category rows plus `replay_ratio` times as many old-category rows,
    drawn from outside `old_valid`: the forgetting check must score rows it did not train on."""
    pool = data.old.drop(index=data.old_valid.index)
    replay = min(int(len(data.fit) * params.finetune.replay_ratio), len(pool))
    if replay == 0:
        return data.fit
    return pd.concat([data.fit, pool.sample(replay, random_state=params.train.seed)])


def fine_tune(
    model: MultiTaskModel,
    data: TransferData,
    params: Params,
    trainable: list[nn.Parameter],
    learning_rate: float,
    description: str,
    extra_loss: ExtraLoss | None = None,
) -> Outcome:
    f = params.finetune
    settings = replace(
        settings_from_params(params.train, model.config.head_names()),
        learning_rate=learning_rate,
        weight_decay=0.0,
        embedding_l2=0.0,
        max_epochs=f.max_epochs,
        patience=f.patience,
        warmup_epochs=0,
    )
    result = fit(
        model,
        tensors(model, fit_rows(data, params), params.train.listwise_group_s),
        tensors(model, data.valid),
        settings,
        trainable=trainable,
        description=description,
        extra_loss=extra_loss,
    )
    own = {id(p) for p in model.parameters()}
    return Outcome(result, sum(p.numel() for p in trainable if id(p) in own), result.samples)


def fine_tune_all(
    model: MultiTaskModel,
    data: TransferData,
    params: Params,
    description: str,
    extra_loss: ExtraLoss | None = None,
    extra_parameters: list[nn.Parameter] | None = None,
) -> Outcome:
    """Every layer of `model` (and `extra_parameters`, e.g. a domain classifier) adapts at
    `finetune.full_learning_rate`: the strategies that regularise instead of freezing."""
    return fine_tune(
        model,
        data,
        params,
        [*model.parameters(), *(extra_parameters or [])],
        params.finetune.full_learning_rate,
        description,
        extra_loss=extra_loss,
    )
