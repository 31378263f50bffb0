"""The `finetune` step: adapt the pre-trained model to the new categories of protocol
taobao-transfer-v1 with the shared layers (embeddings and experts) frozen, so only the
task gates and towers move."""

from __future__ import annotations

import logging
from pathlib import Path

from shopguide.config import Params
from shopguide.errors import ShopguideError
from shopguide.io import atomic_path, write_json
from shopguide.metrics import task_metrics
from shopguide.model.fit import FitSettings, fit, predict
from shopguide.model.store import load_model, save_model
from shopguide.model.tensors import (
    is_new_category,
    new_category_rule,
    read_training_set,
    time_split,
    to_tensors,
)
from shopguide.train import write_history

log = logging.getLogger(__name__)


def finetune_step(
    training_set: Path,
    base_model: Path,
    model_dir: Path,
    metrics_path: Path,
    history_path: Path,
    params: Params,
) -> dict:
    frame = read_training_set(training_set)
    model = load_model(base_model)
    new = frame[is_new_category(frame["category_id"], params.finetune)]
    train_new, test_new = new[new["split"] == "train"], new[new["split"] == "test"]
    if len(train_new) < 50:
        raise ShopguideError(
            f"{training_set}: only {len(train_new)} training exposures in new categories "
            f"({new_category_rule(params.finetune)}); need >= 50"
        )
    tasks, dense = model.config.tasks, model.config.dense_features
    test_tensors = to_tensors(test_new, tasks, dense)
    before = task_metrics(test_tensors.labels.numpy(), predict(model, test_tensors), tasks)

    shared = {id(p) for p in model.shared_parameters()}
    for p in model.parameters():
        p.requires_grad_(id(p) not in shared)
    trainable = [p for p in model.parameters() if p.requires_grad]
    fit_part, valid_part = time_split(train_new, params.train.validation_fraction)
    f, t = params.finetune, params.train
    result = fit(
        model,
        to_tensors(fit_part, tasks, dense),
        to_tensors(valid_part, tasks, dense),
        FitSettings(
            f.learning_rate, t.weight_decay, 0.0, t.batch_size, f.max_epochs, f.patience, t.seed
        ),
        trainable=trainable,
        description="fine-tune (shared layers frozen)",
    )
    for p in model.parameters():
        p.requires_grad_(True)
    after = task_metrics(test_tensors.labels.numpy(), predict(model, test_tensors), tasks)
    with atomic_path(model_dir) as tmp:
        save_model(model, tmp)
    metrics = {
        "new_category_test_before": before,
        "new_category_test_after": after,
        "finetune_rows": len(fit_part),
        "trainable_parameters": sum(p.numel() for p in trainable),
        "best_epoch": result.best_epoch,
    }
    write_json(metrics_path, metrics)
    write_history(result.history, history_path)
    log.info(
        "new-category test AUC before -> after: %s",
        {k: f"{before[k]['auc'] or 0:.4f} -> {after[k]['auc'] or 0:.4f}" for k in tasks},
    )
    return metrics
