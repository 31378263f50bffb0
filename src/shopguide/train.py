"""The `train` step: pre-train the model named in `params.yaml` on the old categories' training
exposures (data-parallel when started by `torchrun`).

New categories (protocol taobao-transfer-v1) are held out here so that `finetune` measures
transfer to categories the model has never seen.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from shopguide.config import Params
from shopguide.errors import ShopguideError
from shopguide.feature_spec import (
    SEQUENCE_VIEW,
    dense_inputs,
    model_feature_columns,
    sequence_features,
    source_column,
)
from shopguide.io import atomic_path, write_json
from shopguide.model.base import MultiTaskModel
from shopguide.model.experts import expert_health, has_experts
from shopguide.model.fit import (
    aux_metrics,
    fit,
    init_distributed,
    resolve_device,
    settings_from_params,
    world,
)
from shopguide.model.store import save_model
from shopguide.model.tasks import AuxTask
from shopguide.model.tensors import is_new_category, read_training_set, time_split, to_tensors
from shopguide.model.zoo import build, make_config

log = logging.getLogger(__name__)


def _dense_stats(frame: pd.DataFrame, columns: tuple[str, ...]) -> tuple[list, list]:
    """Mean and std of log1p of each dense input (at each row's moment), one input at a time:
    a float64 copy of the whole table would cost gigabytes on a 10M-row training set."""
    mean, std = [], []
    moments = frame["t0"].to_numpy(np.int64)
    for column in columns:
        values = dense_inputs(frame, moments, (column,))[:, 0].astype(np.float64)
        logged = np.log1p(values.clip(min=0))
        mean.append(float(logged.mean()))
        std.append(max(float(logged.std()), 1e-3))
    return mean, std


def build_model(frame: pd.DataFrame, params: Params) -> MultiTaskModel:
    """The model `params.model.name`, with dense statistics and base rates from `frame`."""
    dense = tuple(model_feature_columns())
    sequence_length = (
        0 if params.model.sequence_encoder == "none" else (params.features.sequence_length)
    )
    needed = [
        *dict.fromkeys(map(source_column, dense)),
        *(f"{SEQUENCE_VIEW}__{f}" for f in sequence_features(sequence_length)),
    ]
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise ShopguideError(
            f"the training set lacks feature columns {missing}; rebuild it (`shopguide features`)"
        )
    mean, std = _dense_stats(frame, dense)
    aux = params.protocol.aux_tasks
    missing = [a.name for a in aux if a.name not in frame.columns]
    if missing:
        raise ShopguideError(
            f"the training set has no label columns {missing}; rebuild the exposures and "
            "training set with these protocol.aux_tasks (`shopguide ingest`, `shopguide features`)"
        )
    tasks = params.protocol.tasks
    config = make_config(
        params.model,
        tasks=tasks,
        base_rates=tuple(float(frame[t].mean()) if len(frame) else 0.5 for t in tasks),
        dense_features=dense,
        dense_mean=mean,
        dense_std=std,
        sequence_length=sequence_length,
        aux_tasks=tuple(
            AuxTask.from_params(a, frame[a.name].dropna().to_numpy(np.float64)) for a in aux
        ),
    )
    return build(config)


def training_examples(training_set: Path, ranking_set: Path | None, params: Params) -> pd.DataFrame:
    """The training set and, with `train.ranking_queries` and a ranking set, its train
    split's taobao-rank-v1 queries (protocol rule 5): each candidate labelled for its query's
    task, 1 for the acted item, and unknown (NaN) for every other task, so only its own task
    and that query's ranking learn from it."""
    frame = read_training_set(training_set).assign(ranking_query=False)
    if not params.train.ranking_queries or ranking_set is None:
        return frame
    if not Path(ranking_set).is_file():
        raise ShopguideError(
            f"{ranking_set}: ranking set not found (run `shopguide features` first, or set "
            "train.ranking_queries: false)"
        )
    queries = pd.read_parquet(ranking_set)
    queries = queries[queries["split"] == "train"]
    if queries.empty:
        return frame
    heads = [*params.protocol.tasks, *(a.name for a in params.protocol.aux_tasks)]
    labels = {
        t: np.where(queries["task"] == t, queries["positive"].astype(np.float64), np.nan)
        for t in heads
    }
    labelled = queries.assign(**labels, sampled=True, ranking_query=True)
    rows = labelled[[c for c in frame.columns if c in labelled.columns]]
    log.info(
        "training on %d rows of %d train-split ranking queries too",
        len(rows),
        queries["query_id"].nunique(),
    )
    return pd.concat([frame, rows], ignore_index=True)


def write_outputs(
    model: MultiTaskModel,
    model_dir: Path,
    metrics: dict,
    metrics_path: Path,
    history: list[dict],
    history_path: Path,
    extra_files: dict[str, str] | None = None,
) -> None:
    """The model (and `extra_files`, name -> text, in its directory), its metrics and its
    training history, each atomically; the model goes into place last, so a model on disk
    has its metrics and history beside it (a process killed in between leaves no model, and
    the next write removes its temporary files)."""
    with atomic_path(model_dir) as staged:
        save_model(model, staged)
        for name, text in (extra_files or {}).items():
            (staged / name).write_text(text)
        write_json(metrics_path, metrics)
        with atomic_path(history_path) as tmp:
            pd.DataFrame(history).to_csv(tmp, index=False)


def train_step(
    training_set: Path,
    model_dir: Path,
    metrics_path: Path,
    history_path: Path,
    params: Params,
    checkpoint_dir: Path | None = None,
    ranking_set: Path | None = None,
) -> dict:
    """Train and write the model; with `checkpoint_dir`, checkpoint every epoch and resume
    from the last checkpoint of an interrupted run with the same settings. With `ranking_set`
    (and `train.ranking_queries`), its training queries are trained on too."""
    init_distributed(resolve_device(params.train.device))
    frame = training_examples(training_set, ranking_set, params)
    old = frame[
        (frame["split"] == "train") & ~is_new_category(frame["category_id"], params.finetune)
    ]
    if len(old) < 100:
        raise ShopguideError(f"{training_set}: only {len(old)} training exposures, need >= 100")
    fit_part, valid_part = time_split(old, params.train.validation_fraction)
    torch.manual_seed(params.train.seed)
    model = build_model(fit_part, params)
    heads = model.config.head_names()
    valid = to_tensors(valid_part, heads, model.config)
    result = fit(
        model,
        to_tensors(fit_part, heads, model.config, params.train.listwise_group_s),
        valid,
        settings_from_params(params.train, heads),
        description=f"train {params.model.name}",
        checkpoint_dir=checkpoint_dir,
    )
    metrics = {
        "model": params.model.name,
        "validation": result.best_metrics,
        "validation_aux": aux_metrics(model, valid),
        "best_epoch": result.best_epoch,
        "train_rows": len(fit_part),
        "validation_rows": len(valid_part),
        "processes": world()[1],
    }
    if has_experts(model):
        metrics["expert_health"] = expert_health(model, valid)
    if world()[0] != 0:
        return metrics
    write_outputs(model, model_dir, metrics, metrics_path, result.history, history_path)
    log.info(
        "trained model saved to %s; validation %s",
        model_dir,
        {k: round(v["auc"] or 0, 4) for k, v in result.best_metrics.items()},
    )
    return metrics
