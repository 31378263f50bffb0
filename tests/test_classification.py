"""A task's ROC curve and confusion matrix in KFP ClassificationMetrics' shape, from the
evaluate step's ROC points and counts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from kfp.dsl import ClassificationMetrics

from shopguide.classification import task_curves
from shopguide.errors import ShopguideError
from shopguide.metrics import roc_points


def test_curves_and_the_confusion_matrix_at_the_best_threshold(tmp_path: Path) -> None:
    labels = np.array([[0], [0], [0], [1], [0], [1], [0], [1], [1]])
    probs = np.array([[0.1], [0.2], [0.3], [0.4], [0.5], [0.6], [0.7], [0.8], [0.9]])
    roc = pd.DataFrame(roc_points(labels, probs, ("buy",)))
    assert roc["threshold"].max() == 1.0  # scikit-learn's infinity, as a probability
    roc.to_csv(tmp_path / "roc.csv", index=False)
    curves = task_curves(
        tmp_path / "roc.csv", {"overall": {"buy": {"positives": 4, "rows": 9}}}, "buy"
    )
    # From 0.4 on: all 4 positives and 2 of 5 negatives (J 0.6; 0.6 gives 0.55, 0.8 0.5).
    assert curves["operating_threshold"] == pytest.approx(0.4)
    assert curves["matrix"] == [[3, 2], [0, 4]]
    assert curves["categories"] == ["negative", "positive"]
    plots = ClassificationMetrics()
    plots.log_roc_curve(curves["fpr"], curves["tpr"], curves["threshold"])
    plots.log_confusion_matrix(curves["categories"], curves["matrix"])
    assert len(plots.metadata["confidenceMetrics"]) == len(roc)
    assert plots.metadata["confusionMatrix"]["rows"] == [{"row": [3, 2]}, {"row": [0, 4]}]


def test_a_task_without_points_or_counts_is_an_error(tmp_path: Path) -> None:
    pd.DataFrame([{"task": "cart", "fpr": 0.0, "tpr": 0.0, "threshold": 1.0}]).to_csv(
        tmp_path / "roc.csv", index=False
    )
    with pytest.raises(ShopguideError, match="no ROC points for task 'buy'"):
        task_curves(tmp_path / "roc.csv", {"overall": {}}, "buy")
    with pytest.raises(ShopguideError, match="no positives/rows for task 'cart'"):
        task_curves(tmp_path / "roc.csv", {"overall": {}}, "cart")
