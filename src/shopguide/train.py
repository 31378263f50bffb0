"""The `train` step: pre-train the model named in `params.yaml` on the old categories' training
exposures (data-parallel when started by `torchrun`).

New categories (protocol taobao-transfer-v1) are held out here so that `finetune` measures
transfer to categories the model has never seen.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
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
from shopguide.model.experts import PROBE_ROWS, expert_health, has_experts
from shopguide.model.fit import (
    aux_metrics,
    fit,
    init_distributed,
    resolve_device,
    settings_from_params,
    world,
)
from shopguide.model.store import save_model
from shopguide.model.stream import TensorStream, TimeCut, parts_of, read_parts
from shopguide.model.tasks import AuxTask
from shopguide.model.tensors import (
    Tensors,
    is_new_category,
    read_training_set,
    time_split,
    to_tensors,
)
from shopguide.model.zoo import build, make_config

log = logging.getLogger(__name__)


class _Moments:
    """Running count, mean and sum of squared deviations of columns, merged chunk by chunk
    (Chan et al.), so statistics over a streamed table equal those of the whole table."""

    def __init__(self, width: int) -> None:
        self.count = np.zeros(width)
        self.mean = np.zeros(width)
        self.m2 = np.zeros(width)

    def add(self, values: np.ndarray, at: slice = slice(None)) -> None:
        """Merge float64 `values`, (rows, columns `at` names) or (rows,) for one column;
        NaN entries are left out."""
        values = values.reshape(len(values), -1)
        known = ~np.isnan(values)
        n = known.sum(0).astype(np.float64)
        mean = np.nansum(values, 0) / np.maximum(n, 1)
        m2 = np.nansum((values - mean) ** 2, 0)
        total = self.count[at] + n
        delta = mean - self.mean[at]
        share = np.divide(n, total, out=np.zeros_like(n), where=total > 0)
        self.m2[at] += m2 + delta**2 * self.count[at] * share
        self.mean[at] += delta * share
        self.count[at] = total

    def std(self) -> np.ndarray:
        return np.sqrt(
            np.divide(self.m2, self.count, out=np.zeros_like(self.m2), where=self.count > 0)
        )


def build_model(frames: pd.DataFrame | Iterable[pd.DataFrame], params: Params) -> MultiTaskModel:
    """The model `params.model.name`, with dense statistics and base rates from the rows of
    `frames` (one table, or the parts of a streamed one, read once)."""
    dense = tuple(model_feature_columns())
    sequence_length = (
        0 if params.model.sequence_encoder == "none" else (params.features.sequence_length)
    )
    needed = [
        *dict.fromkeys(map(source_column, dense)),
        *(f"{SEQUENCE_VIEW}__{f}" for f in sequence_features(sequence_length)),
    ]
    tasks, aux = params.protocol.tasks, params.protocol.aux_tasks
    inputs, rates = _Moments(len(dense)), _Moments(len(tasks))
    aux_values: dict[str, list[np.ndarray]] = {a.name: [] for a in aux}
    for frame in [frames] if isinstance(frames, pd.DataFrame) else frames:
        missing = [c for c in needed if c not in frame.columns]
        if missing:
            raise ShopguideError(
                f"the training set lacks feature columns {missing}; rebuild it "
                "(`shopguide features`)"
            )
        missing = [a.name for a in aux if a.name not in frame.columns]
        if missing:
            raise ShopguideError(
                f"the training set has no label columns {missing}; rebuild the exposures and "
                "training set with these protocol.aux_tasks (`shopguide ingest`, "
                "`shopguide features`)"
            )
        # log1p of each dense input at each row's moment, one input at a time: a float64
        # copy of a whole 10M-row table would cost gigabytes
        moments = frame["t0"].to_numpy(np.int64)
        for j, column in enumerate(dense):
            values = dense_inputs(frame, moments, (column,))[:, 0].astype(np.float64)
            inputs.add(np.log1p(values.clip(min=0)), slice(j, j + 1))
        rates.add(frame[list(tasks)].to_numpy(np.float64))
        for a in aux:
            aux_values[a.name].append(frame[a.name].dropna().to_numpy(np.float64))
    config = make_config(
        params.model,
        tasks=tasks,
        base_rates=tuple(
            float(m) if n else 0.5 for m, n in zip(rates.mean, rates.count, strict=True)
        ),
        dense_features=dense,
        dense_mean=[float(m) for m in inputs.mean],
        dense_std=[max(float(s), 1e-3) for s in inputs.std()],
        sequence_length=sequence_length,
        aux_tasks=tuple(
            AuxTask.from_params(a, np.concatenate(aux_values[a.name] or [np.zeros(0)])) for a in aux
        ),
    )
    return build(config)


def ranking_rows(queries: pd.DataFrame, columns: Iterable[str], params: Params) -> pd.DataFrame:
    """Ranking queries as training rows (protocol rule 5): each candidate labelled for its
    query's task, 1 for the acted item, and unknown (NaN) for every other task, so only its
    own task and that query's ranking learn from it; `columns` those of the training set."""
    heads = [*params.protocol.tasks, *(a.name for a in params.protocol.aux_tasks)]
    labels = {
        t: np.where(queries["task"] == t, queries["positive"].astype(np.float64), np.nan)
        for t in heads
    }
    labelled = queries.assign(**labels, sampled=True, ranking_query=True)
    return labelled[[c for c in columns if c in labelled.columns]]


def training_examples(training_set: Path, ranking_set: Path | None, params: Params) -> pd.DataFrame:
    """The training set and, with `train.ranking_queries` and a ranking set, its train
    split's taobao-rank-v1 queries (`ranking_rows`)."""
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
    rows = ranking_rows(queries, frame.columns, params)
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


def example_files(training_set: Path, ranking_set: Path | None, params: Params) -> list[Path]:
    """The files training examples are read from: the training set and, with
    `train.ranking_queries` and a ranking set, that set (its train-split queries)."""
    files = [Path(training_set)]
    if params.train.ranking_queries and ranking_set is not None:
        if not Path(ranking_set).is_file():
            raise ShopguideError(
                f"{ranking_set}: ranking set not found (run `shopguide features` first, or set "
                "train.ranking_queries: false)"
            )
        files.append(Path(ranking_set))
    return files


def as_examples(frame: pd.DataFrame, file: int, columns: list[str], params: Params) -> pd.DataFrame:
    """Rows of `example_files`' file number `file` as training examples: the training set's as
    they are, the ranking set's as `ranking_rows` (`columns`: the training set's)."""
    if file == 0:
        return frame.assign(ranking_query=False)
    return ranking_rows(frame, columns, params)


def example_columns(files: list[Path]) -> list[str]:
    return [*pq.ParquetFile(files[0]).schema_arrow.names, "ranking_query"]


def training_streams(
    training_set: Path, ranking_set: Path | None, params: Params
) -> tuple[TensorStream, TensorStream]:
    """The fit and validation rows `train` learns from, as streams of the files' row groups:
    exactly the rows of `training_examples`' old categories' train split and its `time_split`
    (found by two scans of three columns), without holding the table."""
    files = example_files(training_set, ranking_set, params)
    parts = parts_of(files)
    columns = example_columns(files)

    def eligible(frame: pd.DataFrame) -> np.ndarray:
        return (frame["split"] == "train").to_numpy() & ~is_new_category(
            frame["category_id"], params.finetune
        ).to_numpy()

    def moments() -> Iterator[np.ndarray]:
        for frame in read_parts(files, parts, ["t0", "split", "category_id"]):
            yield frame["t0"].to_numpy(np.int64)[eligible(frame)]

    cut = TimeCut.of(moments(), params.train.validation_fraction)
    ties_before, fit_rows, valid_rows, ties = [], [], [], 0
    for t0 in moments():
        ties_before.append(ties)
        kept = int(cut.fit_rows(t0, ties).sum())
        fit_rows.append(kept)
        valid_rows.append(len(t0) - kept)
        ties += int((t0 == cut.t0).sum())

    def rows_of(index: int, frame: pd.DataFrame, fit_side: bool) -> pd.DataFrame:
        frame = as_examples(frame[eligible(frame)], parts[index].file, columns, params)
        fit_mask = cut.fit_rows(frame["t0"].to_numpy(np.int64), ties_before[index])
        return frame[fit_mask if fit_side else ~fit_mask]

    def stream(rows: list[int], fit_side: bool) -> TensorStream:
        return TensorStream(
            files=tuple(files),
            parts=tuple(parts),
            rows=tuple(rows),
            select=lambda i, frame: rows_of(i, frame, fit_side),
            buffer_rows=params.train.shuffle_buffer_rows,
            sort_by="t0",  # a set read whole is in `time_split`'s order
        )

    return stream(fit_rows, True), stream(valid_rows, False)


def _memory_data(
    training_set: Path, ranking_set: Path | None, params: Params
) -> tuple[MultiTaskModel, Tensors, Tensors]:
    """The model and its fit and validation rows held whole (`train.loader: memory`)."""
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
    return (
        model,
        to_tensors(fit_part, heads, model.config, params.train.listwise_group_s),
        to_tensors(valid_part, heads, model.config),
    )


def _streamed_data(
    training_set: Path, ranking_set: Path | None, params: Params
) -> tuple[MultiTaskModel, TensorStream, TensorStream]:
    """The model and its fit and validation rows as streams (`train.loader: stream`)."""
    fit_rows, valid_rows = training_streams(training_set, ranking_set, params)
    if len(fit_rows) + len(valid_rows) < 100:
        raise ShopguideError(
            f"{training_set}: only {len(fit_rows) + len(valid_rows)} training exposures, "
            "need >= 100"
        )
    torch.manual_seed(params.train.seed)
    model = build_model(fit_rows.frames(), params)
    heads, config = model.config.head_names(), model.config
    group_s = params.train.listwise_group_s
    return (
        model,
        fit_rows.converting(lambda frame: to_tensors(frame, heads, config, group_s)),
        valid_rows.converting(lambda frame: to_tensors(frame, heads, config)),
    )


def training_data(
    training_set: Path, ranking_set: Path | None, params: Params
) -> tuple[MultiTaskModel, Tensors | TensorStream, Tensors | TensorStream]:
    """The model `train` starts from and its fit and validation rows, read as
    `train.loader` says."""
    load = _streamed_data if params.train.loader == "stream" else _memory_data
    return load(training_set, ranking_set, params)


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
    model, train, valid = training_data(training_set, ranking_set, params)
    heads = model.config.head_names()
    result = fit(
        model,
        train,
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
        "train_rows": len(train),
        "validation_rows": len(valid),
        "processes": world()[1],
    }
    if has_experts(model):
        probe = valid if isinstance(valid, Tensors) else valid.head(PROBE_ROWS)
        metrics["expert_health"] = expert_health(model, probe)
    if world()[0] != 0:
        return metrics
    write_outputs(model, model_dir, metrics, metrics_path, result.history, history_path)
    log.info(
        "trained model saved to %s; validation %s",
        model_dir,
        {k: round(v["auc"] or 0, 4) for k, v in result.best_metrics.items()},
    )
    return metrics
