"""A declared dataset's examples as model inputs: the model config its features and tasks
call for, and the tensors of a set of examples. Binary served tasks are the model's ranked
`tasks`; every other task (regression, multiclass, auxiliary binary) is a typed head beside
them (`shopguide.model.tasks.AuxTask`)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from shopguide.config import ModelParams
from shopguide.dataset.encode import bag_tokens, category_codes, text_tokens
from shopguide.dataset.schema import DatasetSchema
from shopguide.errors import ShopguideError
from shopguide.model.base import ModelConfig
from shopguide.model.tasks import AuxTask
from shopguide.model.tensors import Tensors, moment_groups
from shopguide.model.zoo import make_config


def head_tasks(schema: DatasetSchema, tasks: list[str] | None = None) -> tuple[list, list]:
    """(ranked binary tasks, other tasks) among `tasks` (default: all declared), in order."""
    names = tasks or list(schema.tasks)
    unknown = [t for t in names if t not in schema.tasks]
    if unknown:
        raise ShopguideError(f"{schema.name}: no tasks {unknown} (declared: {list(schema.tasks)})")
    ranked = [
        t for t in names if schema.tasks[t].type == "binary" and schema.tasks[t].role == "served"
    ]
    return ranked, [t for t in names if t not in ranked]


def model_config(
    train: pd.DataFrame,
    schema: DatasetSchema,
    params: ModelParams,
    tasks: list[str] | None = None,
) -> ModelConfig:
    """The config of `params.name` for the schema's features and `tasks`, with the numeric
    inputs' statistics and every head's starting point from the training examples `train`."""
    ranked, others = head_tasks(schema, tasks)
    numeric = schema.features_of("numeric")
    values = train[numeric].to_numpy(np.float64)
    mean = np.nan_to_num(np.nanmean(values, axis=0)) if len(values) else np.zeros(len(numeric))
    std = np.nan_to_num(np.nanstd(values, axis=0)) if len(values) else np.ones(len(numeric))
    aux = []
    for name in others:
        spec = schema.tasks[name]
        labels = train[name].dropna().to_numpy(np.float64)
        aux.append(
            AuxTask.of_labels(name, spec.type, labels, loss=spec.loss, n_classes=spec.n_classes)
        )
    bags = tuple(schema.features_of("bag") + schema.features_of("text"))
    return make_config(
        params,
        tasks=tuple(ranked),
        base_rates=tuple(float(train[t].mean()) if len(train) else 0.5 for t in ranked),
        dense_features=tuple(numeric),
        dense_mean=tuple(float(m) for m in mean),
        dense_std=tuple(max(float(s), 1e-3) for s in std),
        dense_log1p=False,
        aux_tasks=tuple(aux),
        categorical_features=tuple(schema.features_of("categorical")),
        categorical_buckets=schema.categorical_buckets,
        bag_features=bags,
        bag_buckets=schema.text.buckets,
        bag_idf=schema.text.idf and bool(bags),
    )


def to_tensors(frame: pd.DataFrame, schema: DatasetSchema, config: ModelConfig) -> Tensors:
    """The inputs and labels of the examples in `frame` for a model of `config`. A missing
    number reads as its training mean (0 once standardised); a multiclass label is clipped to
    0..n_classes - 1; a task column the frame lacks (served rows carry no labels) is unknown."""
    dense = frame[list(config.dense_features)].to_numpy(np.float32)
    dense = np.where(np.isnan(dense), np.asarray(config.dense_mean, np.float32), dense)
    labels = np.stack(
        [
            frame[h].to_numpy(np.float32) if h in frame else np.full(len(frame), np.nan, np.float32)
            for h in config.head_names()
        ],
        axis=1,
    ).reshape(len(frame), len(config.head_names()))  # explicit: a frame may have no rows
    for j, task in enumerate(config.aux_tasks, start=len(config.tasks)):
        if task.type == "multiclass":
            labels[:, j] = np.clip(np.round(labels[:, j]), 0, task.n_classes - 1)
    buckets = config.categorical_buckets
    codes = [category_codes(frame[f], buckets) for f in config.categorical_features]
    bags = [_bag(frame, schema, f) for f in config.bag_features]
    return Tensors.of(
        frame,
        dense=dense,
        labels=labels,
        group=moment_groups(frame),
        codes=np.stack(codes, axis=1) if codes else None,
        bags=np.stack(bags, axis=1) if bags else None,
    )


def _bag(frame: pd.DataFrame, schema: DatasetSchema, name: str) -> np.ndarray:
    spec = schema.features[name]
    column = schema.column(spec.column)
    if column.type == "text":
        return text_tokens(frame[name], schema.text)
    return bag_tokens(frame[name], column.separator, schema.text)
