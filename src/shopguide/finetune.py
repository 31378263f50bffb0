"""The `finetune` step: adapt a model (the train step's, or the registry's champion: see
`finetune.base`) to the new categories of protocol taobao-transfer-v1 with the strategy in
`finetune.strategy` (shopguide.transfer). It reports the test AUC on the new categories, and on
the old ones (forgetting, which the gate judges), before and after."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

from shopguide.config import Params
from shopguide.model.routed import split_routes
from shopguide.model.store import load_model
from shopguide.model.tensors import is_new_category
from shopguide.registry import champion
from shopguide.train import training_examples, write_outputs
from shopguide.transfer import adapt, auc_change, transfer_data
from shopguide.transfer.common import frame_metrics

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


def finetune_step(
    training_set: Path,
    base_model: Path,
    model_dir: Path,
    metrics_path: Path,
    history_path: Path,
    params: Params,
    ranking_set: Path | None = None,
) -> dict:
    frame = training_examples(training_set, ranking_set, params)
    model = load_model(base_model)
    data = transfer_data(frame, params)
    test = frame[frame["split"] == "test"]
    new = is_new_category(test["category_id"], params.finetune)
    before = {"new": frame_metrics(model, test[new]), "old": frame_metrics(model, test[~new])}
    adapted = adapt(model, data, params)
    model = adapted.model
    after = {"new": frame_metrics(model, test[new]), "old": frame_metrics(model, test[~new])}
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
