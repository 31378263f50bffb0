"""Per-task ranking and calibration metrics."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    f1_score,
    log_loss,
    mean_absolute_error,
    mean_squared_error,
    r2_score,
    roc_auc_score,
    roc_curve,
)


def task_metrics(
    labels: np.ndarray,
    probs: np.ndarray,
    tasks: tuple[str, ...],
    users: np.ndarray | None = None,
    moments: np.ndarray | None = None,
) -> dict:
    """AUC (None when a task has one class only) and log loss for each task column, over the
    rows whose label is known (not NaN); with `users`, also GAUC (None without a user who has
    both classes), and with `moments` (a group id per row: one user at one moment) the same
    within each moment as `moment_auc`."""
    out = {}
    for j, task in enumerate(tasks):
        known = ~np.isnan(labels[:, j])
        y, p = labels[known, j], np.clip(probs[known, j], 1e-7, 1 - 1e-7)
        both = 0 < y.sum() < len(y)
        out[task] = {
            "auc": float(roc_auc_score(y, p)) if both else None,
            "logloss": float(log_loss(y, p, labels=[0, 1])) if len(y) else None,
            "positives": int(y.sum()),
            "rows": len(y),
        }
        for name, groups in (("gauc", users), ("moment_auc", moments)):
            if groups is not None:
                value = weighted_gauc(y, p, groups[known], np.ones((1, len(y))))[0]
                out[task][name] = None if np.isnan(value) else float(value)
    return out


def task_populations(
    labels: np.ndarray, exposures: np.ndarray, tasks: tuple[str, ...]
) -> dict[str, np.ndarray]:
    """Each task's rows to judge it on: the exposures, or every row when the task's label is
    the same on every exposure (a click, on items the user viewed) and so ranks nothing there."""
    out = {}
    for j, task in enumerate(tasks):
        y = labels[exposures, j]
        constant = len(y) > 0 and (y == y[0]).all() and not exposures.all()
        out[task] = np.ones(len(labels), bool) if constant else exposures
    return out


def aux_task_metrics(kind: str, labels: np.ndarray, predictions: np.ndarray) -> dict:
    """An auxiliary task's metrics by its type: binary AUC, log loss and calibration error
    (10 equal-mass bins); regression RMSE, MAE and R2; multiclass accuracy, macro-F1 and log
    loss. `predictions`: a probability, a value, or (rows, n_classes) probabilities."""
    out: dict = {"rows": len(labels)}
    if not len(labels):
        return out
    if kind == "binary":
        p = np.clip(predictions, 1e-7, 1 - 1e-7)
        both = 0 < labels.sum() < len(labels)
        ece = weighted_ece(labels, p, calibration_bins(p, 10), np.ones((1, len(p))))[0]
        return out | {
            "auc": float(roc_auc_score(labels, p)) if both else None,
            "logloss": float(log_loss(labels, p, labels=[0, 1])),
            "ece": float(ece),
            "positives": int(labels.sum()),
        }
    if kind == "regression":
        return out | {
            "rmse": float(np.sqrt(mean_squared_error(labels, predictions))),
            "mae": float(mean_absolute_error(labels, predictions)),
            "r2": float(r2_score(labels, predictions)) if len(labels) > 1 else None,
            "label_mean": float(labels.mean()),
        }
    classes = np.arange(predictions.shape[1])
    y, guess = labels.astype(np.int64), predictions.argmax(axis=1)
    return out | {
        "accuracy": float(accuracy_score(y, guess)),
        "macro_f1": float(f1_score(y, guess, average="macro", zero_division=0)),
        "logloss": float(log_loss(y, predictions, labels=classes)),
        "class_counts": np.bincount(y, minlength=len(classes)).tolist(),
    }


def mean_metric(metrics: dict, name: str = "auc") -> float:
    """The mean of one metric (auc, gauc) over the tasks that have it; 0.5 when none has."""
    values = [m[name] for m in metrics.values() if m.get(name) is not None]
    return float(np.mean(values)) if values else 0.5


def roc_points(labels: np.ndarray, probs: np.ndarray, tasks: tuple[str, ...]) -> list[dict]:
    """ROC curve rows (task, fpr, tpr, threshold: predicted positive at probability >= it; the
    first point's, scikit-learn's infinity, is written 1.0), thinned to at most ~200 points per
    task."""
    rows = []
    for j, task in enumerate(tasks):
        if not 0 < labels[:, j].sum() < len(labels):
            continue
        fpr, tpr, thresholds = roc_curve(labels[:, j], probs[:, j])
        keep = np.unique(np.linspace(0, len(fpr) - 1, min(len(fpr), 200)).astype(int))
        rows += [
            {"task": task, "fpr": float(f), "tpr": float(t), "threshold": float(min(h, 1.0))}
            for f, t, h in zip(fpr[keep], tpr[keep], thresholds[keep], strict=True)
        ]
    return rows


# --- Weighted metrics for bootstrap intervals --------------------------------------------------
#
# A bootstrap resample of n rows is a vector of multiplicities w (how often each row was drawn);
# every metric below takes a matrix W of shape (resamples, n) and returns one value per
# resample, so 1,000 resamples cost a few vectorised passes instead of 1,000 Python loops.
# With W = ones((1, n)) they are the ordinary metrics (checked against scikit-learn in tests).


def _tie_groups(keys: np.ndarray) -> np.ndarray:
    """Start offsets of runs of equal values in sorted `keys`."""
    return np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]]) if len(keys) else np.zeros(0, int)


def weighted_auc(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """ROC AUC per row of `weights` (ties count one half); NaN where a class has no weight."""
    weights = np.atleast_2d(weights)
    if not len(labels):
        return np.full(len(weights), np.nan)
    order = np.argsort(scores, kind="mergesort")
    starts = _tie_groups(scores[order])
    w = weights[:, order]
    y = labels[order].astype(bool)
    pos = np.add.reduceat(np.where(y, w, 0.0), starts, axis=1)
    neg = np.add.reduceat(np.where(y, 0.0, w), starts, axis=1)
    below = np.cumsum(neg, axis=1) - neg
    num = (pos * (below + 0.5 * neg)).sum(axis=1)
    p, n = pos.sum(axis=1), neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((p > 0) & (n > 0), num / (p * n), np.nan)


def weighted_gauc(
    labels: np.ndarray, scores: np.ndarray, users: np.ndarray, weights: np.ndarray
) -> np.ndarray:
    """Per-user AUC averaged with each user's exposure weight (GAUC, Zhou et al. 2018), over
    users who have both a positive and a negative; NaN when no user has."""
    weights = np.atleast_2d(weights)
    if not len(labels):
        return np.full(len(weights), np.nan)
    order = np.lexsort((scores, users))
    u, s, y = users[order], scores[order], labels[order].astype(bool)
    starts = np.flatnonzero(np.r_[True, (u[1:] != u[:-1]) | (s[1:] != s[:-1])])
    user_first = np.flatnonzero(np.r_[True, u[starts][1:] != u[starts][:-1]])
    w = weights[:, order]
    pos = np.add.reduceat(np.where(y, w, 0.0), starts, axis=1)
    neg = np.add.reduceat(np.where(y, 0.0, w), starts, axis=1)
    before = np.cumsum(neg, axis=1) - neg
    group_user = np.repeat(np.arange(len(user_first)), np.diff(np.r_[user_first, len(starts)]))
    below = before - before[:, user_first][:, group_user]  # negatives below, same user only
    num = np.add.reduceat(pos * (below + 0.5 * neg), user_first, axis=1)
    p = np.add.reduceat(pos, user_first, axis=1)
    n = np.add.reduceat(neg, user_first, axis=1)
    valid = (p > 0) & (n > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = np.where(valid, num / np.where(valid, p * n, 1.0), 0.0)
        exposure = np.where(valid, p + n, 0.0)
        total = exposure.sum(axis=1)
        return np.where(total > 0, (exposure * auc).sum(axis=1) / total, np.nan)


def weighted_logloss(labels: np.ndarray, probs: np.ndarray, weights: np.ndarray) -> np.ndarray:
    weights = np.atleast_2d(weights)
    p = np.clip(probs.astype(np.float64), 1e-7, 1 - 1e-7)
    loss = -(labels * np.log(p) + (1 - labels) * np.log1p(-p))
    total = weights.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, weights @ loss / total, np.nan)


def calibration_bins(probs: np.ndarray, bins: int) -> np.ndarray:
    """Equal-mass bin of each prediction (predicted rates here are mostly below 5%, so
    equal-width bins would put nearly everything in the first one)."""
    if not len(probs):
        return np.zeros(0, np.int64)
    edges = np.unique(np.quantile(probs, np.linspace(0, 1, bins + 1)[1:-1]))
    return np.searchsorted(edges, probs, side="right")


def weighted_ece(
    labels: np.ndarray, probs: np.ndarray, bins: np.ndarray, weights: np.ndarray
) -> np.ndarray:
    """Expected calibration error: sum over bins of |observed rate - mean prediction| weighted
    by the bin's share of rows; `bins` from `calibration_bins` on the unresampled rows."""
    weights = np.atleast_2d(weights)
    if not len(labels):
        return np.full(len(weights), np.nan)
    order = np.argsort(bins, kind="mergesort")
    starts = _tie_groups(bins[order])
    gap = np.add.reduceat(weights[:, order] * (labels - probs)[order], starts, axis=1)
    total = weights.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, np.abs(gap).sum(axis=1) / total, np.nan)


def calibration_curve(labels: np.ndarray, probs: np.ndarray, bins: int) -> list[dict]:
    """Reliability diagram rows: mean prediction and observed rate per equal-mass bin."""
    index = calibration_bins(probs, bins)
    rows = []
    for b in np.unique(index):
        mask = index == b
        rows.append(
            {
                "bin": int(b),
                "mean_predicted": float(probs[mask].mean()),
                "observed_rate": float(labels[mask].mean()),
                "rows": int(mask.sum()),
            }
        )
    return rows


def bootstrap_weights(
    n: int, samples: int, seed: int, max_cells: int = 10_000_000
) -> Iterator[np.ndarray]:
    """Multiplicity matrices of `samples` bootstrap resamples of n rows, in chunks of at most
    `max_cells` entries; the same seed gives the same resamples (a paired bootstrap)."""
    rng = np.random.default_rng(seed)
    chunk = max(1, min(samples, max_cells // max(n, 1)))
    for start in range(0, samples, chunk):
        b = min(chunk, samples - start)
        draws = rng.integers(0, n, size=(b, n)) + (np.arange(b) * n)[:, None]
        yield np.bincount(draws.ravel(), minlength=b * n).reshape(b, n).astype(np.float64)


def interval(values: np.ndarray, confidence: float) -> tuple[float | None, float | None]:
    """Percentile interval of bootstrap values (NaN resamples dropped)."""
    values = values[~np.isnan(values)]
    if not len(values):
        return None, None
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)
