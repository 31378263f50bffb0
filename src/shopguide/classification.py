"""ROC curve and confusion matrix of one task in the shape of KFP's ClassificationMetrics
artifact, whose curve and matrix the Kubeflow Pipelines UI plots natively.

Both come from the evaluate step's outputs: the ROC points (plots/roc.csv, with thresholds)
and the task's test positives and rows (metrics/evaluate.json). The confusion matrix is the one
at the ROC point of largest Youden's J (tpr - fpr), the threshold that best separates the
classes on the test split; the counts follow exactly from its rates.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from shopguide.errors import ShopguideError

CATEGORIES = ["negative", "positive"]


def task_curves(roc_csv: Path, evaluation: dict, task: str) -> dict:
    """{"fpr", "tpr", "threshold": lists; "categories"; "matrix" (rows: true class, columns:
    predicted, in CATEGORIES order); "operating_threshold"} of `task`."""
    roc = pd.read_csv(roc_csv)
    points = roc[roc["task"] == task]
    if points.empty:
        raise ShopguideError(f"{roc_csv}: no ROC points for task {task!r} (one class only?)")
    try:
        counts = evaluation["overall"][task]
        positives, rows = int(counts["positives"]), int(counts["rows"])
    except KeyError as exc:
        raise ShopguideError(f"the evaluation has no positives/rows for task {task!r}") from exc
    negatives = rows - positives
    best = points.iloc[int((points["tpr"] - points["fpr"]).to_numpy().argmax())]
    true_pos = round(float(best["tpr"]) * positives)
    false_pos = round(float(best["fpr"]) * negatives)
    return {
        "fpr": points["fpr"].astype(float).tolist(),
        "tpr": points["tpr"].astype(float).tolist(),
        "threshold": points["threshold"].astype(float).tolist(),
        "categories": CATEGORIES,
        "matrix": [
            [negatives - false_pos, false_pos],
            [positives - true_pos, true_pos],
        ],
        "operating_threshold": float(best["threshold"]),
    }
