"""Task types beyond the ranked binary tasks: what an auxiliary task's head outputs, its loss,
and its predictions. A model's heads emit the binary tasks' logits first (one column each),
then every auxiliary task's columns (one, or n_classes for multiclass)."""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch.nn import functional as F

from shopguide.config import AuxTaskParams


def log_odds(rate: float) -> float:
    """A head's starting logit for a positive rate (clipped away from 0 and 1)."""
    rate = min(max(rate, 1e-6), 1 - 1e-6)
    return math.log(rate / (1 - rate))


class AuxTask(BaseModel):
    """The part of an auxiliary task the model needs (the label definition stays in params)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    type: Literal["binary", "regression", "multiclass"]
    loss: Literal["mse", "huber"] = "huber"
    huber_delta: float = Field(default=1.0, gt=0)
    n_classes: int = Field(default=2, ge=2)
    # Regression: the head predicts the standardised label (training labels' mean and std).
    label_mean: float = 0.0
    label_std: float = Field(default=1.0, gt=0)
    # Binary and multiclass: the training share of each class (the head starts there).
    class_shares: tuple[float, ...] = ()

    @property
    def width(self) -> int:
        return self.n_classes if self.type == "multiclass" else 1

    def initial_bias(self) -> list[float]:
        """The head's starting output: the log-odds or log-shares of the training classes
        (regression heads predict a standardised label, whose prior is 0)."""
        if not self.class_shares:
            return [0.0] * self.width
        if self.type == "binary":
            return [log_odds(self.class_shares[1])]
        return np.log(np.clip(self.class_shares, 1e-6, None)).tolist()

    @classmethod
    def from_params(cls, params: AuxTaskParams, labels: np.ndarray) -> AuxTask:
        """The task as configured, with the label statistics of the training rows."""
        return cls.of_labels(
            params.name,
            params.type,
            labels,
            loss=params.loss,
            huber_delta=params.huber_delta,
            n_classes=params.n_classes,
        )

    @classmethod
    def of_labels(cls, name: str, kind: str, labels: np.ndarray, **settings: object) -> AuxTask:
        """Task `name` of type `kind`, its head starting from the training `labels`."""
        task = cls(name=name, type=kind, **settings)
        regression = kind == "regression" and len(labels) > 0
        return task.model_copy(
            update={
                "label_mean": float(labels.mean()) if regression else 0.0,
                "label_std": max(float(labels.std()), 1e-3) if regression else 1.0,
                "class_shares": _shares(kind, task.n_classes, labels),
            }
        )


def _shares(kind: str, n_classes: int, labels: np.ndarray) -> tuple[float, ...]:
    if kind == "regression" or len(labels) == 0:
        return ()
    classes = 2 if kind == "binary" else n_classes
    counts = np.bincount(labels.astype(np.int64).clip(0, classes - 1), minlength=classes)
    return tuple(float(c) for c in counts / counts.sum())


def aux_loss(task: AuxTask, output: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Mean loss of one auxiliary task; `output` (batch, width), `label` (batch,) float (a class
    index for multiclass)."""
    if task.type == "binary":
        return F.binary_cross_entropy_with_logits(output[:, 0], label)
    if task.type == "multiclass":
        return F.cross_entropy(output, label.long())
    target = (label - task.label_mean) / task.label_std
    if task.loss == "huber":
        return F.huber_loss(output[:, 0], target, delta=task.huber_delta)
    return F.mse_loss(output[:, 0], target)


def _masked(loss: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """The mean of `loss` over the rows whose label is known (0 when none is)."""
    return (loss * known).sum(0) / known.sum(0).clamp_min(1.0)


def task_losses(
    outputs: torch.Tensor,
    labels: torch.Tensor,
    binary: int,
    aux: tuple[AuxTask, ...],
    pointwise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-task mean losses (binary tasks first, then auxiliary ones), shape (tasks,), each over
    the rows whose label for it is known: a NaN label (a ranking query's other tasks) takes no
    part, nor do rows whose `pointwise` (batch,) is False. `outputs` (batch, binary + aux
    widths); `labels` (batch, binary + len(aux))."""
    known = ~torch.isnan(labels)
    if pointwise is not None:
        known &= pointwise.unsqueeze(1)
    labels = torch.nan_to_num(labels, nan=0.0)
    losses = _masked(
        F.binary_cross_entropy_with_logits(
            outputs[:, :binary], labels[:, :binary], reduction="none"
        ),
        known[:, :binary].float(),
    )
    if not aux:
        return losses
    column, extra = binary, []
    for j, task in enumerate(aux):
        rows = known[:, binary + j]
        extra.append(
            aux_loss(task, outputs[rows, column : column + task.width], labels[rows, binary + j])
            if bool(rows.any())
            else outputs.new_zeros(())
        )
        column += task.width
    return torch.cat([losses, torch.stack(extra)])


def listwise_losses(
    outputs: torch.Tensor, labels: torch.Tensor, group: torch.Tensor
) -> torch.Tensor:
    """Per binary task (columns of `outputs` and `labels`), the softmax cross-entropy of each
    group's rows (one user at one moment) against its positives, averaged over the groups with
    a positive and a negative: a loss on the ranking within a group only, blind to what shifts
    a whole group (the user's activity, the moment). Rows with a NaN label take no part."""
    _, g = torch.unique(group, return_inverse=True)
    groups, tasks = int(g.max()) + 1 if len(g) else 0, outputs.shape[1]
    known = ~torch.isnan(labels)
    positive = known & (labels > 0.5)
    z = outputs.masked_fill(~known, float("-inf"))
    index = g.unsqueeze(1).expand(-1, tasks)
    top = torch.full((groups, tasks), float("-inf"), device=outputs.device, dtype=outputs.dtype)
    top = top.scatter_reduce(0, index, z, reduce="amax", include_self=True).detach()
    top = torch.nan_to_num(top, neginf=0.0)
    weights = torch.exp(z - top[g])  # 0 for unknown rows
    total = torch.zeros_like(top).index_add(0, g, weights)
    counts = torch.zeros_like(top).index_add(0, g, known.float())
    hits = torch.zeros_like(top).index_add(0, g, positive.float())
    hit_logits = torch.zeros_like(top).index_add(0, g, torch.where(positive, outputs, 0.0))
    valid = (hits > 0) & (hits < counts)
    loss = torch.log(total.clamp_min(1e-30)) + top - hit_logits / hits.clamp_min(1.0)
    return (loss * valid).sum(0) / valid.sum(0).clamp_min(1)


def aux_predictions(outputs: torch.Tensor, binary: int, aux: tuple[AuxTask, ...]) -> dict:
    """{name: predictions}: binary a probability (rows,), regression the value (rows,),
    multiclass class probabilities (rows, n_classes)."""
    out, column = {}, binary
    for task in aux:
        block = outputs[:, column : column + task.width].float()
        column += task.width
        if task.type == "binary":
            out[task.name] = torch.sigmoid(block[:, 0]).numpy()
        elif task.type == "multiclass":
            out[task.name] = torch.softmax(block, dim=1).numpy()
        else:
            out[task.name] = (block[:, 0] * task.label_std + task.label_mean).numpy()
    return out
