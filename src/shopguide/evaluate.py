"""The `evaluate` step: the candidate's report card on the test split.

Per task: ROC AUC, log loss, expected calibration error and per-user AUC (GAUC), overall and
per slice (old / new categories of protocol taobao-transfer-v1; head / torso / tail categories
by training popularity), each with a percentile bootstrap interval over test exposures. Writes
the metrics JSON (DVC metrics), ROC and calibration points (DVC plots) and an HTML report.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from shopguide.config import EvaluationParams, Params
from shopguide.errors import ShopguideError
from shopguide.io import atomic_path, write_json
from shopguide.metrics import (
    bootstrap_weights,
    calibration_bins,
    calibration_curve,
    interval,
    roc_points,
    weighted_auc,
    weighted_ece,
    weighted_gauc,
    weighted_logloss,
)
from shopguide.model.base import MultiTaskModel
from shopguide.model.fit import aux_metrics, predict
from shopguide.model.store import load_model
from shopguide.model.tensors import is_new_category, read_training_set, to_tensors
from shopguide.registry import model_fingerprint

log = logging.getLogger(__name__)

METRICS = ("auc", "logloss", "ece", "gauc")
GROUPS = ("head", "torso", "tail")


def split_frames(training_set: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train split, test split) of the training set."""
    frame = read_training_set(training_set)
    test = frame[frame["split"] == "test"].reset_index(drop=True)
    if test.empty:
        raise ShopguideError(f"{training_set}: no test exposures (check protocol.test_start)")
    return frame[frame["split"] == "train"].reset_index(drop=True), test


def category_groups(train: pd.DataFrame, shares: tuple[float, float]) -> dict[int, str]:
    """head / torso / tail of each training category: categories sorted by training exposures,
    head while the cumulative share before them is below shares[0], torso below shares[1]."""
    counts = train["category_id"].value_counts(sort=True)
    before = (counts.cumsum() - counts) / max(int(counts.sum()), 1)
    group = np.where(before < shares[0], "head", np.where(before < shares[1], "torso", "tail"))
    return dict(zip(counts.index.astype(int), group, strict=True))


def slice_masks(test: pd.DataFrame, train: pd.DataFrame, params: Params) -> dict[str, np.ndarray]:
    """Boolean row masks of the test split for every slice the report and the gate judge."""
    new = is_new_category(test["category_id"], params.finetune).to_numpy()
    groups = category_groups(train, params.evaluation.category_group_shares)
    group = test["category_id"].map(groups).fillna("tail").to_numpy()
    masks = {"old_categories": ~new, "new_categories": new}
    masks |= {f"{g}_categories": group == g for g in GROUPS}
    return masks


@dataclass(frozen=True)
class Scored:
    """A model's test-split predictions and everything the metrics need beside them."""

    tasks: tuple[str, ...]
    labels: np.ndarray  # (rows, tasks) float
    probs: np.ndarray  # (rows, tasks) float
    users: np.ndarray  # (rows,) int64
    slices: dict[str, np.ndarray]  # name -> (rows,) bool


def score_model(model: MultiTaskModel, test: pd.DataFrame, slices: dict[str, np.ndarray]) -> Scored:
    tasks = model.config.tasks
    data = to_tensors(test, tasks, model.config.dense_features)
    probs = predict(model, data).astype(np.float64)
    bad = int((~np.isfinite(probs)).any(axis=1).sum())
    if bad:  # NaN sorts as a score in an AUC and compares False in every check
        raise ShopguideError(
            f"the model predicts non-finite probabilities for {bad} of {len(probs)} test "
            "exposures (diverged weights?)"
        )
    return Scored(
        tasks,
        data.labels.numpy().astype(np.float64),
        probs,
        test["user_id"].to_numpy(np.int64),
        slices,
    )


def test_aux_metrics(model: MultiTaskModel, test: pd.DataFrame, training_set: Path) -> dict:
    """Auxiliary tasks' test metrics (point values; they are reported, never gated)."""
    heads = model.config.head_names()
    missing = [t for t in heads if t not in test.columns]
    if missing:
        raise ShopguideError(f"{training_set}: no label columns {missing} for the model's tasks")
    return aux_metrics(model, to_tensors(test, heads, model.config.dense_features))


def _metric_values(
    y: np.ndarray, p: np.ndarray, users: np.ndarray, bins: np.ndarray, w: np.ndarray
) -> dict[str, np.ndarray]:
    return {
        "auc": weighted_auc(y, p, w),
        "logloss": weighted_logloss(y, p, w),
        "ece": weighted_ece(y, p, bins, w),
        "gauc": weighted_gauc(y, p, users, w),
    }


def _clean(x: float) -> float | None:
    return None if x is None or np.isnan(x) else float(x)


def report_metrics(scored: Scored, settings: EvaluationParams) -> dict:
    """{"overall": {task: metrics}, "slices": {slice: {task: metrics}}} where metrics hold each
    of METRICS, its `<metric>_ci` {"low", "high"}, positives and rows."""
    parts = {"overall": np.ones(len(scored.labels), bool), **scored.slices}
    point: dict[str, dict[str, dict]] = {name: {} for name in parts}
    draws: dict[tuple[str, str, str], list[np.ndarray]] = {}
    bins = {}
    for name, mask in parts.items():
        for j, task in enumerate(scored.tasks):
            y, p = scored.labels[mask, j], scored.probs[mask, j]
            bins[name, task] = calibration_bins(p, settings.calibration_bins)
            values = _metric_values(
                y, p, scored.users[mask], bins[name, task], np.ones((1, len(y)))
            )
            point[name][task] = {m: _clean(v[0]) for m, v in values.items()} | {
                "positives": int(y.sum()),
                "rows": len(y),
            }
    for weights in bootstrap_weights(len(scored.labels), settings.bootstrap_samples, settings.seed):
        for name, mask in parts.items():
            w = weights[:, mask]
            for j, task in enumerate(scored.tasks):
                y, p = scored.labels[mask, j], scored.probs[mask, j]
                values = _metric_values(y, p, scored.users[mask], bins[name, task], w)
                for metric, v in values.items():
                    draws.setdefault((name, task, metric), []).append(v)
    for (name, task, metric), chunks in draws.items():
        low, high = interval(np.concatenate(chunks), settings.confidence)
        point[name][task][f"{metric}_ci"] = {"low": low, "high": high}
    overall = point.pop("overall")
    aucs = [m["auc"] for m in overall.values() if m["auc"] is not None]
    return {
        "overall": overall,
        "mean_auc": float(np.mean(aucs)) if aucs else 0.5,
        "slices": point,
        "bootstrap": {
            "samples": settings.bootstrap_samples,
            "confidence": settings.confidence,
            "seed": settings.seed,
        },
    }


def _png(fig: plt.Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _roc_png(roc: pd.DataFrame) -> str:
    fig, ax = plt.subplots(figsize=(5, 4))
    for task, part in roc.groupby("task", sort=False):
        ax.plot(part["fpr"], part["tpr"], label=task)
    ax.plot([0, 1], [0, 1], "k--", linewidth=0.8)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC on test")
    ax.legend()
    return _png(fig)


def _calibration_png(curve: pd.DataFrame) -> str:
    fig, ax = plt.subplots(figsize=(5, 4))
    top = float(max(curve["mean_predicted"].max(), curve["observed_rate"].max(), 1e-3))
    for task, part in curve.groupby("task", sort=False):
        ax.plot(part["mean_predicted"], part["observed_rate"], "o-", label=task)
    ax.plot([0, top], [0, top], "k--", linewidth=0.8)
    ax.set(
        xlabel="mean predicted probability",
        ylabel="observed rate",
        title="Calibration on test (equal-mass bins)",
    )
    ax.legend()
    return _png(fig)


def _cell(m: dict, metric: str) -> str:
    value, ci = m.get(metric), m.get(f"{metric}_ci") or {}
    if value is None:
        return "<td>n/a</td>"
    text = f"{value:.4f}"
    if ci.get("low") is not None:
        text += f" <small>[{ci['low']:.4f}, {ci['high']:.4f}]</small>"
    return f"<td>{text}</td>"


def _html(metrics: dict, roc: pd.DataFrame, curve: pd.DataFrame, model_dir: Path) -> str:
    rows = []
    for name, block in [("all", metrics["overall"]), *metrics["slices"].items()]:
        for task, m in block.items():
            cells = "".join(_cell(m, metric) for metric in METRICS)
            rows.append(
                f"<tr><td>{html.escape(name)}</td><td>{html.escape(task)}</td>{cells}"
                f"<td>{m['positives']}</td><td>{m['rows']}</td></tr>"
            )
    boot = metrics["bootstrap"]
    aux = "".join(
        f"<tr><td>{html.escape(task)}</td><td>{html.escape(json.dumps(m))}</td></tr>"
        for task, m in metrics.get("aux", {}).items()
    )
    if aux:
        aux = f"<h2>Auxiliary tasks (test)</h2><table><tr><th>task</th><th>metrics</th></tr>{aux}"
        aux += "</table>"
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>shopguide evaluation</title>
<style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:4px 10px;text-align:right}}
table{{border-collapse:collapse}}tr:nth-child(even){{background:#f3f3f3}}
small{{color:#666}}</style></head><body>
<h1>Evaluation of {html.escape(str(model_dir))}</h1>
<p>Mean test AUC over tasks: <b>{metrics["mean_auc"]:.4f}</b>. Brackets: {boot["confidence"]:.0%}
percentile bootstrap intervals over test exposures ({boot["samples"]} resamples, seed
{boot["seed"]}). ECE: expected calibration error over equal-mass bins. GAUC: per-user AUC
weighted by the user's exposures, over users with both outcomes. Slices: old / new categories
(protocol taobao-transfer-v1); head / torso / tail categories by training exposures.</p>
<table><tr><th>slice</th><th>task</th><th>AUC</th><th>log loss</th><th>ECE</th><th>GAUC</th>
<th>positives</th><th>rows</th></tr>{"".join(rows)}</table>{aux}
<img alt="ROC curves" src="data:image/png;base64,{_roc_png(roc)}">
<img alt="Calibration curves" src="data:image/png;base64,{_calibration_png(curve)}">
</body></html>"""


def evaluate_step(
    training_set: Path,
    model_dir: Path,
    metrics_path: Path,
    roc_path: Path,
    report_path: Path,
    params: Params,
    calibration_path: Path | None = None,
) -> dict:
    """Score the model on the test split and write the metrics, plots and report.
    `calibration_path` defaults to calibration.csv beside `roc_path`."""
    model = load_model(model_dir)
    train, test = split_frames(training_set)
    scored = score_model(model, test, slice_masks(test, train, params))
    metrics = report_metrics(scored, params.evaluation)
    if model.config.aux_tasks:
        metrics["aux"] = test_aux_metrics(model, test, training_set)
    metrics["model_dir"] = str(Path(model_dir).resolve())
    metrics["model_fingerprint"] = model_fingerprint(model_dir)
    roc = pd.DataFrame(roc_points(scored.labels, scored.probs, scored.tasks))
    curve = pd.DataFrame(
        [
            {"task": task, **row}
            for j, task in enumerate(scored.tasks)
            for row in calibration_curve(
                scored.labels[:, j], scored.probs[:, j], params.evaluation.calibration_bins
            )
        ]
    )
    calibration_path = calibration_path or Path(roc_path).with_name("calibration.csv")
    write_json(metrics_path, metrics)
    with atomic_path(roc_path) as tmp:
        roc.to_csv(tmp, index=False)
    with atomic_path(calibration_path) as tmp:
        curve.to_csv(tmp, index=False)
    with atomic_path(report_path) as tmp:
        tmp.write_text(_html(metrics, roc, curve, model_dir))
    log.info(
        "test AUC %s (mean %.4f), GAUC %s; report %s",
        {t: round(m["auc"] or 0, 4) for t, m in metrics["overall"].items()},
        metrics["mean_auc"],
        {t: round(m["gauc"] or 0, 4) for t, m in metrics["overall"].items()},
        report_path,
    )
    return metrics
