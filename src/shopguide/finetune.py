"""The `finetune` step: adapt a model (the train step's, or the registry's champion: see
`finetune.base`) to the new categories of protocol taobao-transfer-v1 with the strategy in
`finetune.strategy` (shopguide.transfer). It reports the test AUC on the new categories, and on
the old ones (forgetting, which the gate judges), before and after."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from shopguide.config import Params
from shopguide.held_out import HeldOut
from shopguide.model.base import MultiTaskModel
from shopguide.model.fit import predict
from shopguide.model.routed import split_routes
from shopguide.model.store import load_model
from shopguide.model.stream import parts_of, read_parts
from shopguide.model.tensors import exposures_of, is_new_category
from shopguide.registry import champion
from shopguide.train import as_examples, example_columns, example_files, write_outputs
from shopguide.transfer import adapt, auc_change, transfer_data
from shopguide.transfer.common import judged_metrics, tensors
from shopguide.transfer.data import user_budget

log = logging.getLogger(__name__)


def finetune_base(
    registry: Path, pretrained: Path, base: Literal["pretrained", "champion"] = "champion"
) -> Path:
    """The model to fine-tune (`finetune.base`): `pretrained`, or the registry's champion
    (`pretrained` while there is none)."""
    if base == "pretrained":
        return pretrained
    current = champion(registry)
    if current is None:
        log.info("no champion in %s yet: fine-tuning %s", registry, pretrained)
        return pretrained
    log.info("fine-tuning the champion %s (%s)", current.name, current.path)
    return current.path


def finetune_examples(training_set: Path, ranking_set: Path | None, params: Params) -> pd.DataFrame:
    """The train split of `training_examples`, read a row group at a time, keeping the
    new-category rows of a user-hash sample of about `finetune.new_rows` of them and the
    old-category rows of one of about `finetune.old_rows` (all where they are fewer): what
    fine-tuning learns from, and what replay, the forgetting check, alignment and
    meta-learning draw from, at a size that does not grow with the data."""
    files = example_files(training_set, ranking_set, params)
    parts = parts_of(files)
    columns = example_columns(files)
    bounds = {True: params.finetune.new_rows, False: params.finetune.old_rows}  # by: new?
    rows = dict.fromkeys(bounds, 0)
    for frame in read_parts(files, parts, ["split", "category_id"]):
        new = is_new_category(frame["category_id"], params.finetune).to_numpy()
        train = (frame["split"] == "train").to_numpy()
        for side in rows:
            rows[side] += int((train & (new == side)).sum())
    shares = {side: min(1.0, bounds[side] / max(rows[side], 1)) for side in rows}
    kept = []
    for part, frame in zip(parts, read_parts(files, parts), strict=True):
        train = frame[(frame["split"] == "train").to_numpy()]
        new = is_new_category(train["category_id"], params.finetune)
        train = pd.concat([user_budget(train[new == side], shares[side]) for side in shares])
        kept.append(as_examples(train.sort_index(), part.file, columns, params))
    for side, name in ((True, "new"), (False, "old")):
        if shares[side] < 1:
            log.info(
                "fine-tuning on a user sample of %.1f%% of %d %s-category rows (finetune.%s_rows)",
                100 * shares[side], rows[side], name, name,
            )  # fmt: skip
    return pd.concat(kept, ignore_index=True)


def category_test_metrics(model: MultiTaskModel, test: HeldOut, params: Params) -> dict:
    """{"new": metrics, "old": metrics}: `frame_metrics` of the new and the old categories'
    test rows, scored a row group at a time."""
    tasks = model.config.tasks
    kept: dict[str, list[tuple]] = {"new": [], "old": []}
    for frame in test.frames():
        data = tensors(model, frame)
        labels, probs = data.labels.numpy()[:, : len(tasks)], predict(model, data)
        new = is_new_category(frame["category_id"], params.finetune).to_numpy()
        exposed = exposures_of(frame)
        for side, rows in (("new", new), ("old", ~new)):
            kept[side].append((labels[rows], probs[rows], exposed[rows]))
    return {
        side: judged_metrics(*(np.concatenate(v) for v in zip(*parts, strict=True)), tasks)
        for side, parts in kept.items()
    }


def finetune_step(
    training_set: Path,
    base_model: Path,
    model_dir: Path,
    metrics_path: Path,
    history_path: Path,
    params: Params,
    ranking_set: Path | None = None,
) -> dict:
    data = transfer_data(finetune_examples(training_set, ranking_set, params), params)
    model = load_model(base_model)
    test = HeldOut.of(training_set)
    before = category_test_metrics(model, test, params)
    adapted = adapt(model, data, params)
    model = adapted.model
    after = category_test_metrics(model, test, params)
    metrics = {
        "base_model": str(base_model),
        "strategy": params.finetune.strategy,
        "chosen_strategy": adapted.strategy,
        # finetune.isolate: category routes in the candidate (0: one model, adapted in place)
        "routes": len(split_routes(model)[1]),
        "validation_mean_auc": adapted.validation,
        "old_category_validation_drop": adapted.old_validation_drop,
        "new_category_test_before": before["new"],
        "new_category_test_after": after["new"],
        "old_category_test_before": before["old"],
        "old_category_test_after": after["old"],
        "old_category_auc_change": auc_change(before["old"], after["old"]),
        "finetune_rows": len(data.fit),
        "validation_rows": len(data.valid),
        "trainable_parameters": adapted.outcome.trainable,
        "best_epoch": adapted.outcome.result.best_epoch,
    }
    write_outputs(
        model, model_dir, metrics, metrics_path, adapted.outcome.result.history, history_path
    )
    log.info(
        "%s: new-category test AUC before -> after: %s; old-category AUC change %s",
        adapted.strategy,
        {
            k: f"{before['new'][k]['auc'] or 0:.4f} -> {after['new'][k]['auc'] or 0:.4f}"
            for k in model.config.tasks
        },
        {k: round(v, 4) for k, v in metrics["old_category_auc_change"].items() if v is not None},
    )
    return metrics
