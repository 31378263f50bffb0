"""Per-task ranking and calibration metrics."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import log_loss, roc_auc_score, roc_curve


def task_metrics(labels: np.ndarray, probs: np.ndarray, tasks: tuple[str, ...]) -> dict:
    """AUC (None when a task has one class only) and log loss for each task column."""
    out = {}
    for j, task in enumerate(tasks):
        y, p = labels[:, j], np.clip(probs[:, j], 1e-7, 1 - 1e-7)
        both = 0 < y.sum() < len(y)
        out[task] = {
            "auc": float(roc_auc_score(y, p)) if both else None,
            "logloss": float(log_loss(y, p, labels=[0, 1])) if len(y) else None,
            "positives": int(y.sum()),
            "rows": len(y),
        }
    return out


def mean_auc(metrics: dict) -> float:
    aucs = [m["auc"] for m in metrics.values() if m["auc"] is not None]
    return float(np.mean(aucs)) if aucs else 0.5


def roc_points(labels: np.ndarray, probs: np.ndarray, tasks: tuple[str, ...]) -> list[dict]:
    """ROC curve rows (task, fpr, tpr), thinned to at most ~200 points per task."""
    rows = []
    for j, task in enumerate(tasks):
        if not 0 < labels[:, j].sum() < len(labels):
            continue
        fpr, tpr, _ = roc_curve(labels[:, j], probs[:, j])
        keep = np.unique(np.linspace(0, len(fpr) - 1, min(len(fpr), 200)).astype(int))
        rows += [
            {"task": task, "fpr": float(f), "tpr": float(t)}
            for f, t in zip(fpr[keep], tpr[keep], strict=True)
        ]
    return rows
