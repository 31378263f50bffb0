"""The `evaluate` step: per-task AUC and log loss on the test split, overall and for the old
and new category slices, with ROC points for DVC plots and an HTML report."""

from __future__ import annotations

import base64
import html
import io
import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd

from shopguide.config import Params
from shopguide.errors import ShopguideError
from shopguide.io import atomic_path, write_json
from shopguide.metrics import mean_auc, roc_points, task_metrics
from shopguide.model.fit import predict
from shopguide.model.mmoe import MMoE
from shopguide.model.store import load_model
from shopguide.model.tensors import is_new_category, read_training_set, to_tensors

log = logging.getLogger(__name__)


def test_split(training_set: Path) -> pd.DataFrame:
    frame = read_training_set(training_set)
    test = frame[frame["split"] == "test"].reset_index(drop=True)
    if test.empty:
        raise ShopguideError(f"{training_set}: no test exposures (check protocol.test_start)")
    return test


def score(model: MMoE, frame: pd.DataFrame, params: Params) -> dict:
    """Metrics of `model` on `frame`, overall and per category slice."""
    tasks = model.config.tasks
    data = to_tensors(frame, tasks, model.config.dense_features)
    probs = predict(model, data)
    labels = data.labels.numpy()
    new = is_new_category(frame["category_id"], params.finetune).to_numpy()
    overall = task_metrics(labels, probs, tasks)
    return {
        "overall": overall,
        "mean_auc": mean_auc(overall),
        "slices": {
            "old_categories": task_metrics(labels[~new], probs[~new], tasks),
            "new_categories": task_metrics(labels[new], probs[new], tasks),
        },
        "_probs": probs,
        "_labels": labels,
    }


def _roc_png(roc: pd.DataFrame) -> str:
    fig, ax = plt.subplots(figsize=(5, 4))
    for task, part in roc.groupby("task"):
        ax.plot(part["fpr"], part["tpr"], label=task)
    ax.plot([0, 1], [0, 1], "k--", linewidth=0.8)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC on test")
    ax.legend()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _html(metrics: dict, roc: pd.DataFrame, model_dir: Path) -> str:
    rows = []
    for name, block in [("all", metrics["overall"]), *metrics["slices"].items()]:
        for task, m in block.items():
            auc = "n/a" if m["auc"] is None else f"{m['auc']:.4f}"
            loss = "n/a" if m["logloss"] is None else f"{m['logloss']:.4f}"
            rows.append(
                f"<tr><td>{html.escape(name)}</td><td>{task}</td><td>{auc}</td>"
                f"<td>{loss}</td><td>{m['positives']}</td><td>{m['rows']}</td></tr>"
            )
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>shopguide evaluation</title>
<style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:4px 10px;text-align:right}}
table{{border-collapse:collapse}}tr:nth-child(even){{background:#f3f3f3}}</style></head><body>
<h1>Evaluation of {html.escape(str(model_dir))}</h1>
<p>Mean test AUC over tasks: <b>{metrics["mean_auc"]:.4f}</b></p>
<table><tr><th>slice</th><th>task</th><th>AUC</th><th>log loss</th><th>positives</th>
<th>rows</th></tr>{"".join(rows)}</table>
<img alt="ROC curves" src="data:image/png;base64,{_roc_png(roc)}"></body></html>"""


def evaluate_step(
    training_set: Path,
    model_dir: Path,
    metrics_path: Path,
    roc_path: Path,
    report_path: Path,
    params: Params,
) -> dict:
    model = load_model(model_dir)
    scored = score(model, test_split(training_set), params)
    probs, labels = scored.pop("_probs"), scored.pop("_labels")
    roc = pd.DataFrame(roc_points(labels, probs, model.config.tasks))
    write_json(metrics_path, scored)
    with atomic_path(roc_path) as tmp:
        roc.to_csv(tmp, index=False)
    with atomic_path(report_path) as tmp:
        tmp.write_text(_html(scored, roc, model_dir))
    log.info(
        "test AUC %s (mean %.4f); report %s",
        {t: round(m["auc"] or 0, 4) for t, m in scored["overall"].items()},
        scored["mean_auc"],
        report_path,
    )
    return scored
