"""The training loop shared by `train` and `finetune`: shuffled index batches, summed
per-task binary cross-entropy, early stopping on mean validation AUC."""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from shopguide.logs import progress
from shopguide.metrics import mean_auc, task_metrics
from shopguide.model.mmoe import MMoE
from shopguide.model.tensors import Tensors

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FitSettings:
    learning_rate: float
    weight_decay: float
    embedding_l2: float
    batch_size: int
    max_epochs: int
    patience: int
    seed: int


@dataclass
class FitResult:
    best_epoch: int
    best_metrics: dict
    history: list[dict] = field(default_factory=list)


@torch.no_grad()
def predict(model: MMoE, data: Tensors, batch_size: int = 16384) -> np.ndarray:
    """Task probabilities, (rows, tasks)."""
    model.eval()
    out = [
        torch.sigmoid(model(*data.take(torch.arange(i, min(i + batch_size, len(data)))).inputs()))
        for i in range(0, len(data), batch_size)
    ]
    return torch.cat(out).numpy() if out else np.zeros((0, len(model.config.tasks)), np.float32)


def fit(
    model: MMoE,
    train: Tensors,
    valid: Tensors,
    settings: FitSettings,
    trainable: list[nn.Parameter] | None = None,
    description: str = "train",
) -> FitResult:
    """Train in place; on return the model holds the weights of its best validation epoch."""
    torch.manual_seed(settings.seed)
    params = trainable if trainable is not None else list(model.parameters())
    optimizer = torch.optim.AdamW(
        params, lr=settings.learning_rate, weight_decay=settings.weight_decay
    )
    loss_fn = nn.BCEWithLogitsLoss()
    tasks = model.config.tasks
    generator = torch.Generator().manual_seed(settings.seed)
    best = FitResult(best_epoch=-1, best_metrics={})
    best_score, best_state, stale = -1.0, None, 0
    embeddings = [p for p in model.embedding_parameters() if p.requires_grad]
    with progress() as bar:
        job = bar.add_task(description, total=settings.max_epochs)
        for epoch in range(settings.max_epochs):
            model.train()
            order = torch.randperm(len(train), generator=generator)
            total, batches = 0.0, 0
            for start in range(0, len(train), settings.batch_size):
                batch = train.take(order[start : start + settings.batch_size])
                logits = model(*batch.inputs())
                loss = sum(loss_fn(logits[:, j], batch.labels[:, j]) for j in range(len(tasks)))
                if settings.embedding_l2 and embeddings:
                    loss = loss + settings.embedding_l2 * sum(e.pow(2).sum() for e in embeddings)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += float(loss.detach())
                batches += 1
            metrics = task_metrics(valid.labels.numpy(), predict(model, valid), tasks)
            score = mean_auc(metrics)
            row = {"epoch": epoch, "train_loss": total / max(batches, 1), "val_mean_auc": score}
            row |= {f"val_{t}_auc": metrics[t]["auc"] for t in tasks}
            best.history.append(row)
            log.info(
                "%s epoch %d: loss %.4f, validation mean AUC %.4f",
                description,
                epoch,
                row["train_loss"],
                score,
            )
            bar.advance(job)
            if score > best_score:
                best_score, stale = score, 0
                best_state = copy.deepcopy(model.state_dict())
                best.best_epoch, best.best_metrics = epoch, metrics
            else:
                stale += 1
                if stale >= settings.patience:
                    log.info("early stop after epoch %d (best %d)", epoch, best.best_epoch)
                    break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return best
