"""Training and judging a model on a declared dataset: the training split's last examples by
t0 pick the epoch (by the validation loss of every head, since tasks of several types share
no other scale), and each task is reported by its type with bootstrap intervals over the
test examples."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from shopguide.config import Params
from shopguide.dataset.inputs import model_config, to_tensors
from shopguide.dataset.schema import DatasetSchema
from shopguide.metrics import bootstrap_weights, interval, weighted_auc, weighted_gauc
from shopguide.model.base import MultiTaskModel
from shopguide.model.fit import FitResult, fit, head_outputs, probabilities, settings_from_params
from shopguide.model.tasks import aux_predictions
from shopguide.model.tensors import time_split
from shopguide.model.zoo import build


def train_declared(
    examples: pd.DataFrame,
    schema: DatasetSchema,
    params: Params,
    tasks: list[str] | None = None,
) -> tuple[MultiTaskModel, FitResult]:
    """Model `params.model.name` for `tasks` (default: every declared task) trained on the
    train split; the last `train.validation_fraction` of it by t0 picks the epoch."""
    train = examples[examples["split"] == "train"]
    fit_part, valid_part = time_split(train, params.train.validation_fraction)
    torch.manual_seed(params.train.seed)
    config = model_config(fit_part, schema, params.model, tasks)
    model = build(config)
    train_tensors = to_tensors(fit_part, schema, config)
    if config.bag_idf:
        for encoder in model.encoders:
            encoder.set_idf(train_tensors.bags)
    heads = config.head_names()
    settings = settings_from_params(
        params.train.model_copy(
            update={
                "selection": "loss",
                "listwise_weight": 0.0,
                "task_weights": {t: w for t, w in params.train.task_weights.items() if t in heads},
            }
        ),
        heads,
    )
    result = fit(
        model,
        train_tensors,
        to_tensors(valid_part, schema, config),
        settings,
        description=f"{schema.name} {params.model.name} {'+'.join(heads)}",
    )
    return model, result


def predictions(model: MultiTaskModel, frame: pd.DataFrame, schema: DatasetSchema) -> dict:
    """{task: predictions} of every head: a probability, a value, or class probabilities."""
    config = model.config
    outputs = head_outputs(model, to_tensors(frame, schema, config))
    ranked = dict(zip(config.tasks, probabilities(outputs, len(config.tasks)).T, strict=True))
    return ranked | aux_predictions(outputs, len(config.tasks), config.aux_tasks)


def resample_weights(rows: int, samples: int, seed: int) -> np.ndarray:
    """(1 + samples, rows): the test set itself, then its bootstrap resamples (the same for
    every method and seed given the same seed: a paired bootstrap)."""
    return np.vstack([np.ones((1, rows)), *bootstrap_weights(rows, samples, seed)])


def metric_draws(
    kind: str,
    y: np.ndarray,
    guess: np.ndarray,
    weights: np.ndarray,
    users: np.ndarray | None = None,
) -> dict:
    """{metric: (1 + samples,) values} of one task on the rows of `weights`: binary AUC (and,
    given each row's user, GAUC: the ranking within each user), regression RMSE and MAE,
    multiclass accuracy (`guess`: class probabilities)."""
    if kind == "binary":
        out = {"auc": weighted_auc(y, guess, weights)}
        return out if users is None else out | {"gauc": weighted_gauc(y, guess, users, weights)}
    if kind == "regression":
        err = guess - y
        return {
            "rmse": np.sqrt(weights @ err**2 / weights.sum(1)),
            "mae": weights @ np.abs(err) / weights.sum(1),
        }
    hit = (guess.argmax(axis=1) == np.round(y)).astype(np.float64)
    return {"accuracy": weights @ hit / weights.sum(1)}


def summary(draws: dict, confidence: float) -> dict:
    """Each metric's value on the test set and its bootstrap interval."""
    out = {}
    for name, values in draws.items():
        out[name] = float(values[0])
        out[f"{name}_interval"] = list(interval(values[1:], confidence))
    return out


def task_report(
    labels: pd.DataFrame,
    predicted: dict,
    schema: DatasetSchema,
    samples: int = 500,
    confidence: float = 0.95,
    seed: int = 7,
) -> dict:
    """Per task in `predicted`, by its type (`metric_draws`; GAUC where the schema names the
    user), with bootstrap intervals over the rows whose label is known."""
    out = {}
    users = labels["user_id"].to_numpy() if schema.ids.user else None
    for task, guess in predicted.items():
        y = labels[task].to_numpy(np.float64)
        known = ~np.isnan(y)
        weights = resample_weights(int(known.sum()), samples, seed)
        draws = metric_draws(
            schema.tasks[task].type,
            y[known],
            np.asarray(guess)[known],
            weights,
            users[known] if users is not None else None,
        )
        out[task] = {"rows": int(known.sum())} | summary(draws, confidence)
        given = schema.tasks[task].given
        if given is not None:  # e.g. conversion among the clicked: the CVR
            within = known & (labels[given].to_numpy(np.float64) == 1)
            weights = resample_weights(int(within.sum()), samples, seed)
            draws = metric_draws("binary", y[within], np.asarray(guess)[within], weights)
            out[f"{task}_given_{given}"] = {"rows": int(within.sum())} | summary(draws, confidence)
    return out
