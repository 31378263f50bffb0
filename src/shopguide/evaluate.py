"""The `evaluate` step: the candidate's report card on the test split.

Per task: ROC AUC, log loss, expected calibration error and per-user AUC (GAUC), overall and
per slice (old / new categories of protocol taobao-transfer-v1; head / torso / tail categories
by training popularity), each with a percentile bootstrap interval over test rows. "Overall" is
the test exposures (taobao-mtl-v1's rows), except for a task whose label is the same on every
exposure (a click, on items the user viewed): that one is judged over the entire space, the
exposures and the items sampled beside them, which the report's `entire_space` block gives
for every task (point values).

And what is served, a ranking for one user at one moment: protocol taobao-rank-v1's MRR, HR@3
and within-query AUC per task, of the task's probability and of the served score (the
`serving.ranking_weights` sum), overall and per slice of the acted item's category, with
intervals over users. Writes the metrics JSON (DVC metrics), ROC and calibration points (DVC
plots) and an HTML report.
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
from shopguide.held_out import HeldOut
from shopguide.io import atomic_path, write_json
from shopguide.metrics import (
    bootstrap_weights,
    calibration_bins,
    calibration_curve,
    interval,
    roc_points,
    task_populations,
    weighted_auc,
    weighted_ece,
    weighted_gauc,
    weighted_logloss,
)
from shopguide.model.base import MultiTaskModel
from shopguide.model.experts import PROBE_ROWS, expert_health, has_experts
from shopguide.model.fit import aux_metrics, predict
from shopguide.model.routed import Routed
from shopguide.model.store import load_model
from shopguide.model.tensors import (
    exposures_of,
    is_new_category,
    to_tensors,
)
from shopguide.ranking.metrics import RANKING_METRICS, QueryScores, query_scores, summary
from shopguide.ranking.queries import ranked_tasks
from shopguide.registry import model_fingerprint

log = logging.getLogger(__name__)

METRICS = ("auc", "logloss", "ece", "gauc")
GROUPS = ("head", "torso", "tail")
ENTIRE_SPACE = "entire_space"
SERVED = "served"  # the ranking score a request gets: sum of weight * p(task)


def category_groups(counts: pd.Series, shares: tuple[float, float]) -> dict[int, str]:
    """head / torso / tail of each training category, from its training exposures (`counts`,
    most first: `held_out.category_counts`): head while the cumulative share before it is
    below shares[0], torso below shares[1]."""
    before = (counts.cumsum() - counts) / max(int(counts.sum()), 1)
    group = np.where(before < shares[0], "head", np.where(before < shares[1], "torso", "tail"))
    return dict(zip(counts.index.astype(int), group, strict=True))


def category_slices(
    categories: pd.Series, train_exposures: pd.Series, params: Params
) -> dict[str, np.ndarray]:
    """Masks of old / new categories and head / torso / tail categories (by the training
    exposures per category, `train_exposures`) of each row's category."""
    new = is_new_category(categories, params.finetune).to_numpy()
    groups = category_groups(train_exposures, params.evaluation.category_group_shares)
    group = categories.map(groups).fillna("tail").to_numpy()
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
    populations: dict[str, np.ndarray]  # task -> (rows,) bool: the rows it is judged on
    exposures: np.ndarray  # (rows,) bool: the real exposures, not the sampled items

    def parts(self, task: str) -> list[str]:
        """Where `task` is judged: overall and every slice, or overall alone for a task judged
        on the entire space (its slices would cost a bootstrap over every sampled row)."""
        if self.populations[task].all() and not self.exposures.all():
            return ["overall"]
        return ["overall", *self.slices]

    def mask(self, part: str, task: str) -> np.ndarray:
        """The rows judged for `task` in slice `part` ("overall" or a slice name)."""
        rows = self.populations[task]
        return rows if part == "overall" else rows & self.slices[part]


def checked_probabilities(model: MultiTaskModel, frame: pd.DataFrame) -> np.ndarray:
    """(rows, tasks) probabilities of the model on a frame of model inputs; non-finite ones
    are an error."""
    return _finite(predict(model, to_tensors(frame, (), model.config)).astype(np.float64))


def _finite(probs: np.ndarray) -> np.ndarray:
    bad = int((~np.isfinite(probs)).any(axis=1).sum())
    if bad:  # NaN sorts as a score in an AUC and compares False in every check
        raise ShopguideError(
            f"the model predicts non-finite probabilities for {bad} of {len(probs)} test "
            "rows (diverged weights?)"
        )
    return probs


def score_model(model: MultiTaskModel, test: HeldOut, params: Params) -> Scored:
    """The model's predictions on the test rows, scored a row group at a time: what is kept is
    what the metrics need (labels, probabilities, user, category, exposure flag)."""
    tasks = model.config.tasks
    kept: dict[str, list[np.ndarray]] = {k: [] for k in ("labels", "probs", "users", "cats", "exp")}
    for frame in test.frames():
        missing = [t for t in tasks if t not in frame.columns]
        if missing:
            raise ShopguideError(f"{test.path}: the test split has no label columns {missing}")
        kept["labels"].append(frame[list(tasks)].to_numpy(np.float64))
        kept["probs"].append(predict(model, to_tensors(frame, (), model.config)))
        kept["users"].append(frame["user_id"].to_numpy(np.int64))
        kept["cats"].append(frame["category_id"].to_numpy(np.int64))
        kept["exp"].append(exposures_of(frame))
    labels, probs, users, categories, exposures = (np.concatenate(v) for v in kept.values())
    slices = category_slices(pd.Series(categories), test.train_category_exposures, params)
    return Scored(
        tasks,
        labels,
        _finite(probs.astype(np.float64)),
        users,
        slices,
        task_populations(labels, exposures, tasks),
        exposures,
    )


def test_aux_metrics(model: MultiTaskModel, test: HeldOut) -> dict:
    """Auxiliary tasks' test metrics over the entire space, the exposures and the items sampled
    beside them (point values; reported, never gated): the rows they are trained and validated
    on. On the exposures alone an auxiliary count of views always includes the exposure's own
    view at t0 (as a click is always 1 there), a population the model's values, fitted to the
    entire space, are not calibrated to."""
    heads = model.config.head_names()
    missing = [t for t in heads if t not in test.columns]
    if missing:
        raise ShopguideError(f"{test.path}: no label columns {missing} for the model's tasks")
    return aux_metrics(model, test.tensors(model.config))


# --- Ranking (protocol taobao-rank-v1) --------------------------------------------------------


def read_ranking_test(ranking_set: Path) -> pd.DataFrame:
    """The test split's query candidates with their features (empty: no queries)."""
    path = Path(ranking_set)
    if not path.is_file():
        raise ShopguideError(f"{path}: ranking set not found (run `shopguide features` first)")
    frame = pd.read_parquet(path)
    return frame[frame["split"] == "test"].reset_index(drop=True)


def query_scores_of(
    frame: pd.DataFrame, probs: np.ndarray, tasks: tuple[str, ...], weights: dict[str, float]
) -> dict[str, dict[str, QueryScores]]:
    """{task: {score name: per-query metrics}} for each task with queries: the task's own
    probability (named by the task) and the served score."""
    served = probs @ np.array([weights.get(t, 0.0) for t in tasks])
    out: dict[str, dict[str, QueryScores]] = {}
    for task in ranked_tasks(tasks):
        rows = (frame["task"] == task).to_numpy()
        if not rows.any():
            continue
        q = frame.loc[rows]
        args = (q["query_id"].to_numpy(), q["user_id"].to_numpy(), q["positive"].to_numpy())
        out[task] = {
            task: query_scores(*args, probs[rows, tasks.index(task)]),
            SERVED: query_scores(*args, served[rows]),
        }
    return out


def query_slices(frame: pd.DataFrame, train_exposures: pd.Series, params: Params) -> dict:
    """{slice: query ids} by the category of each query's acted (positive) item."""
    acted = frame[frame["positive"] == 1]
    masks = category_slices(acted["category_id"].reset_index(drop=True), train_exposures, params)
    ids = acted["query_id"].to_numpy()
    return {name: set(ids[mask].tolist()) for name, mask in masks.items()}


def _subset(scores: QueryScores, query_ids: np.ndarray, keep: set) -> QueryScores:
    rows = np.isin(query_ids, list(keep))
    return QueryScores(scores.users[rows], {m: v[rows] for m, v in scores.values.items()})


def ranking_report(
    model: MultiTaskModel, frame: pd.DataFrame, train_exposures: pd.Series, params: Params
) -> dict:
    """MRR, HR@3 and within-query AUC per task on the test queries, of the task's probability
    and of the served score, overall and per slice, with intervals over users."""
    settings = params.evaluation
    report: dict = {"protocol": "taobao-rank-v1", "overall": {}, "slices": {}}
    if frame.empty:
        return report
    probs = checked_probabilities(model, frame)
    tasks = model.config.tasks
    scores = query_scores_of(frame, probs, tasks, params.serving.ranking_weights)
    slices = query_slices(frame, train_exposures, params)
    boot = (settings.bootstrap_samples, settings.confidence, settings.seed)
    for task, by_score in scores.items():
        ids = np.sort(frame.loc[frame["task"] == task, "query_id"].unique())
        report["overall"][task] = {name: summary(s, *boot) for name, s in by_score.items()}
        for name, keep in slices.items():
            block = report["slices"].setdefault(name, {})
            block[task] = {
                score: summary(_subset(s, ids, keep), *boot) for score, s in by_score.items()
            }
    return report


def _metric_values(
    y: np.ndarray, p: np.ndarray, users: np.ndarray, bins: np.ndarray, w: np.ndarray
) -> dict[str, np.ndarray]:
    return {
        "auc": weighted_auc(y, p, w),
        "logloss": weighted_logloss(y, p, w),
        "ece": weighted_ece(y, p, bins, w),
        "gauc": weighted_gauc(y, p, users, w),
    }


def _point(scored: Scored, rows: np.ndarray, j: int) -> dict[str, np.ndarray]:
    """AUC, log loss and GAUC of task column `j` on `rows`, unweighted."""
    y, p, ones = scored.labels[rows, j], scored.probs[rows, j], np.ones((1, int(rows.sum())))
    return {
        "auc": weighted_auc(y, p, ones),
        "logloss": weighted_logloss(y, p, ones),
        "gauc": weighted_gauc(y, p, scored.users[rows], ones),
    }


def _clean(x: float) -> float | None:
    return None if x is None or np.isnan(x) else float(x)


def report_metrics(scored: Scored, settings: EvaluationParams) -> dict:
    """{"overall": {task: metrics}, "slices": {slice: {task: metrics}}} where metrics hold each
    of METRICS, its `<metric>_ci` {"low", "high"}, positives and rows."""
    parts = ["overall", *scored.slices]
    point: dict[str, dict[str, dict]] = {name: {} for name in parts}
    draws: dict[tuple[str, str, str], list[np.ndarray]] = {}
    bins = {}
    for j, task in enumerate(scored.tasks):
        for name in scored.parts(task):
            mask = scored.mask(name, task)
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
        for j, task in enumerate(scored.tasks):
            for name in scored.parts(task):
                mask = scored.mask(name, task)
                w = weights[:, mask]
                y, p = scored.labels[mask, j], scored.probs[mask, j]
                values = _metric_values(y, p, scored.users[mask], bins[name, task], w)
                for metric, v in values.items():
                    draws.setdefault((name, task, metric), []).append(v)
    for (name, task, metric), chunks in draws.items():
        low, high = interval(np.concatenate(chunks), settings.confidence)
        point[name][task][f"{metric}_ci"] = {"low": low, "high": high}
    overall = point.pop("overall")
    everything = np.ones(len(scored.labels), bool)
    for task, rows in scored.populations.items():
        overall[task]["population"] = (
            ENTIRE_SPACE if rows.all() and not scored.exposures.all() else "exposures"
        )
    aucs = [m["auc"] for m in overall.values() if m["auc"] is not None]
    return {
        "overall": overall,
        "mean_auc": float(np.mean(aucs)) if aucs else 0.5,
        "slices": point,
        # Point values over the exposures and the items sampled beside them (a bootstrap of
        # every task there would cost more than the rest of the report).
        ENTIRE_SPACE: {
            task: {m: _clean(v[0]) for m, v in _point(scored, everything, j).items()}
            for j, task in enumerate(scored.tasks)
        }
        if not scored.exposures.all()
        else {},
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


def _ranking_html(ranking: dict) -> str:
    """The taobao-rank-v1 table: per slice, task and score, MRR, HR@3 and AUC in the query."""
    rows = []
    for name, block in [("all", ranking.get("overall", {})), *ranking.get("slices", {}).items()]:
        for task, by_score in block.items():
            for score, m in by_score.items():
                cells = "".join(_cell(m, metric) for metric in RANKING_METRICS)
                rows.append(
                    f"<tr><td>{html.escape(name)}</td><td>{html.escape(task)}</td>"
                    f"<td>{html.escape(score)}</td>{cells}<td>{m['queries']}</td>"
                    f"<td>{m['users']}</td></tr>"
                )
    if not rows:
        return "<p>No ranking queries in the test split.</p>"
    return (
        "<h2>Ranking for one user at one moment (protocol taobao-rank-v1)</h2>"
        "<p>At the moment a user first acts on an item, the item is ranked among the other "
        "items they viewed in the lookback before. Score: the task's probability, or "
        "<i>served</i>, the weighted sum a request is ranked by. Brackets: intervals over "
        "users resampled.</p><table><tr><th>slice</th><th>task</th><th>score</th><th>MRR</th>"
        "<th>HR@3</th><th>AUC in query</th><th>queries</th><th>users</th></tr>"
        + "".join(rows)
        + "</table>"
    )


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
    ranking = _ranking_html(metrics.get("ranking") or {})
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
<th>positives</th><th>rows</th></tr>{"".join(rows)}</table>{ranking}{aux}
<img alt="ROC curves" src="data:image/png;base64,{_roc_png(roc)}">
<img alt="Calibration curves" src="data:image/png;base64,{_calibration_png(curve)}">
</body></html>"""


def evaluate_step(
    training_set: Path,
    ranking_set: Path,
    model_dir: Path,
    metrics_path: Path,
    roc_path: Path,
    report_path: Path,
    params: Params,
    calibration_path: Path | None = None,
) -> dict:
    """Score the model on the test split and its ranking queries; write the metrics, plots and
    report. `calibration_path` defaults to calibration.csv beside `roc_path`."""
    model = load_model(model_dir)
    test = HeldOut.of(training_set)
    scored = score_model(model, test, params)
    metrics = report_metrics(scored, params.evaluation)
    queries = read_ranking_test(ranking_set)
    metrics["ranking"] = ranking_report(model, queries, test.train_category_exposures, params)
    if model.config.aux_tasks:
        metrics["aux"] = test_aux_metrics(model, test)
    network = model.base if isinstance(model, Routed) else model  # routed: the base network
    if has_experts(network):
        probe = test.tensors(network.config).head(PROBE_ROWS)
        metrics["expert_health"] = expert_health(network, probe)
    metrics["model_dir"] = str(Path(model_dir).resolve())
    metrics["model_fingerprint"] = model_fingerprint(model_dir)
    roc, curve = [], []
    for j, task in enumerate(scored.tasks):
        rows = scored.populations[task]
        y, p = scored.labels[rows, j : j + 1], scored.probs[rows, j : j + 1]
        roc += roc_points(y, p, (task,))
        bins = params.evaluation.calibration_bins
        curve += [{"task": task, **row} for row in calibration_curve(y[:, 0], p[:, 0], bins)]
    roc_frame, curve_frame = pd.DataFrame(roc), pd.DataFrame(curve)
    calibration_path = calibration_path or Path(roc_path).with_name("calibration.csv")
    write_json(metrics_path, metrics)
    with atomic_path(roc_path) as tmp:
        roc_frame.to_csv(tmp, index=False)
    with atomic_path(calibration_path) as tmp:
        curve_frame.to_csv(tmp, index=False)
    with atomic_path(report_path) as tmp:
        tmp.write_text(_html(metrics, roc_frame, curve_frame, model_dir))
    log.info(
        "test AUC %s (mean %.4f), GAUC %s; taobao-rank-v1 MRR %s; report %s",
        {t: round(m["auc"] or 0, 4) for t, m in metrics["overall"].items()},
        metrics["mean_auc"],
        {t: round(m["gauc"] or 0, 4) for t, m in metrics["overall"].items()},
        {t: round(m[t]["mrr"] or 0, 4) for t, m in metrics["ranking"]["overall"].items()},
        report_path,
    )
    return metrics
