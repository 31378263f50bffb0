"""Multi-task against single-task per category (issue 30's claim "multi-task beats single-task
by 5-15% in every category"), from both models' test predictions on the same rows and seeds:
a `benchmarks/taobao_mtl.py` results file (with the training set it scored), or the
predictions file `benchmarks/declared_mtl.py --predictions` writes for any declared dataset.

Per task: every category with at least --min-positives positives (and one negative) among the
test rows' known labels (a regression task: at least --min-rows rows) gets both models' metric
(the mean of their seeds' AUC, or RMSE) and the relative gain (for RMSE, the error removed);
categories are also pooled by head / torso / tail (training rows per category,
`evaluation.category_group_shares`), with a 95% paired bootstrap interval of the gain over
resampled test rows. Writes JSON, a Markdown table and a PNG of the per-category gains.

    python benchmarks/taobao_mtl.py --models mmoe,single_task --out R.json
    python benchmarks/per_category.py --results R.json --out benchmarks/results/per-category

    python benchmarks/declared_mtl.py --schema datasets/olist.yaml \
        --params datasets/olist.params.yaml --out R.json --predictions P.parquet
    python benchmarks/per_category.py --predictions P.parquet --multi multi_task \
        --names ../shared/data/olist/product_category_name_translation.csv \
        --out benchmarks/results/per-category-olist
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from shopguide.config import Params, load_params
from shopguide.errors import ShopguideError, exit_on_error
from shopguide.evaluate import GROUPS, category_groups
from shopguide.held_out import category_counts
from shopguide.io import write_json
from shopguide.metrics import bootstrap_weights, interval, weighted_auc


@dataclass
class Inputs:
    """Test rows of both models: each task's kind and labels (NaN: unknown), each row's
    category and head / torso / tail group, and per model the seeds' (rows, tasks) scores."""

    kinds: dict[str, str]  # task -> binary | regression
    labels: dict[str, np.ndarray]
    category: np.ndarray
    group: np.ndarray
    scores: dict[str, dict[str, np.ndarray]]  # model -> seed -> (rows, tasks)


def weighted_rmse(labels: np.ndarray, guess: np.ndarray, weights: np.ndarray) -> np.ndarray:
    return np.sqrt(weights @ (guess - labels) ** 2 / weights.sum(axis=1))


METRICS = {"binary": ("auc", weighted_auc), "regression": ("rmse", weighted_rmse)}


def mean_metric(
    kind: str, labels: np.ndarray, seeds: list[np.ndarray], weights: np.ndarray
) -> np.ndarray:
    """Per row of `weights`, the mean over seeds of each seed's metric."""
    metric = METRICS[kind][1]
    return np.mean([metric(labels, p, weights) for p in seeds], axis=0)


def compare(
    labels: np.ndarray,
    multi: list[np.ndarray],
    single: list[np.ndarray],
    rounds: int,
    seed: int,
    kind: str = "binary",
) -> dict:
    """Both models' metric, the gain (positive: multi-task better; absolute and relative to
    single-task) and the gain's 95% paired interval."""
    name = METRICS[kind][0]
    sign = 1.0 if kind == "binary" else -1.0  # RMSE: lower is better
    ones = np.ones((1, len(labels)))
    a = float(mean_metric(kind, labels, multi, ones)[0])
    b = float(mean_metric(kind, labels, single, ones)[0])
    gains = np.concatenate(
        [
            sign * (mean_metric(kind, labels, multi, w) - mean_metric(kind, labels, single, w))
            for w in bootstrap_weights(len(labels), rounds, seed)
        ]
    )
    low, high = interval(gains, 0.95)
    return {
        "positives": int(labels.sum()) if kind == "binary" else None,
        "rows": len(labels),
        f"multi_{name}": a,
        f"single_{name}": b,
        "gain": sign * (a - b),
        "relative_gain": sign * (a - b) / b,
        "gain_ci95": [low, high],
    }


def enough(kind: str, labels: np.ndarray, min_positives: int, min_rows: int) -> bool:
    """Whether a slice can be judged: positives and a negative, or rows for a regression."""
    if kind == "binary":
        return labels.sum() >= min_positives and labels.min() == 0
    return len(labels) >= min_rows


def comparison(inputs: Inputs, multi: str, single: str, args: argparse.Namespace) -> dict:
    seeds = sorted(set(inputs.scores[multi]) & set(inputs.scores[single]))
    if not seeds:
        raise ShopguideError(f"no seed was run for both {multi} and {single}")
    report: dict = {"seeds": seeds, "multi": multi, "single": single, "tasks": {}}
    for j, (task, kind) in enumerate(inputs.kinds.items()):
        labels = inputs.labels[task]
        known = ~np.isnan(labels)
        if kind == "binary" and not 0 < labels[known].sum() < known.sum():
            continue
        slices = {
            f"category {c}": known & (inputs.category == c)
            for c in np.unique(inputs.category[known])
        }
        slices = {
            k: rows
            for k, rows in slices.items()
            if enough(kind, labels[rows], args.min_positives, args.min_rows)
        }
        for g in [*GROUPS, "all"]:
            rows = known & ((inputs.group == g) if g != "all" else True)
            if rows.sum() > 1 and enough(kind, labels[rows], 1, 2):
                slices[f"group {g}"] = rows
        judged = {
            name: compare(
                labels[rows],
                [inputs.scores[multi][s][rows, j] for s in seeds],
                [inputs.scores[single][s][rows, j] for s in seeds],
                args.bootstrap,
                seed=j,
                kind=kind,
            )
            for name, rows in slices.items()
        }
        report["tasks"][task] = {
            "kind": kind,
            "categories": {k[9:]: r for k, r in judged.items() if k.startswith("category ")},
            "groups": {k[6:]: r for k, r in judged.items() if k.startswith("group ")},
        }
    return report


def from_taobao_mtl(results: Path, training_set: Path, params: Params, multi: str, single: str):
    """The test exposures `benchmarks/taobao_mtl.py` scored, in its order."""
    from shopguide.model.tensors import exposures_of, read_training_set

    runs = json.loads(results.read_text())["runs"]
    frame = read_training_set(training_set)
    train, test = frame[frame["split"] == "train"], frame[frame["split"] == "test"]
    test = test[exposures_of(test)]
    exposed = category_counts(train.loc[exposures_of(train), "category_id"])
    groups = category_groups(exposed, params.evaluation.category_group_shares)
    tasks = params.protocol.tasks
    return Inputs(
        kinds=dict.fromkeys(tasks, "binary"),
        labels={t: test[t].to_numpy(dtype=float) for t in tasks},
        category=test["category_id"].to_numpy(),
        group=test["category_id"].map(groups).fillna("tail").to_numpy(),
        scores={
            m: {s: np.asarray(r["probs"]) for s, r in runs[m].items()}
            for m in (multi, single)
            if m in runs
        },
    )


def from_predictions(path: Path) -> Inputs:
    """A predictions file of `benchmarks/declared_mtl.py`: category_id, group, a column
    `label/<kind>/<task>` per task and `<model>/<seed>/<task>` per model, seed and task."""
    frame = pd.read_parquet(path)
    kinds = {c.split("/")[2]: c.split("/")[1] for c in frame.columns if c.startswith("label/")}
    scores: dict[str, dict[str, np.ndarray]] = {}
    for column in frame.columns:
        parts = column.split("/")
        if len(parts) == 3 and parts[0] != "label":
            scores.setdefault(parts[0], {}).setdefault(parts[1], {})[parts[2]] = column
    return Inputs(
        kinds=kinds,
        labels={t: frame[f"label/{k}/{t}"].to_numpy(dtype=float) for t, k in kinds.items()},
        category=frame["category_id"].to_numpy(),
        group=frame["group"].to_numpy(),
        scores={
            m: {s: frame[[cols[t] for t in kinds]].to_numpy(dtype=float) for s, cols in by.items()}
            for m, by in scores.items()
        },
    )


def category_names(path: Path) -> dict[str, str]:
    """A CSV of category values (first column, as the dataset's schema hashes them into
    `category_id`) and the label to show for each (last column)."""
    from shopguide.dataset.examples import hash_values

    table = pd.read_csv(path, dtype=str).dropna()
    ids = hash_values(table.iloc[:, 0].astype("string"))
    return dict(zip(map(str, ids), table.iloc[:, -1], strict=True))


def named(report: dict, names: dict[str, str]) -> dict:
    """`report` with each category id replaced by its name where `names` has one."""
    for parts in report["tasks"].values():
        parts["categories"] = {names.get(c, c): r for c, r in parts["categories"].items()}
    return report


def markdown(report: dict) -> str:
    multi, single = report["multi"], report["single"]
    lines = [
        f"| task | slice | positives (or rows) / rows | {multi} | {single} | "
        "gain [95% CI] | relative |",
        "|---|---|---|---|---|---|---|",
    ]
    for task, parts in report["tasks"].items():
        name = METRICS[parts["kind"]][0]
        for kind, slice_name, r in [
            *(("group", g, r) for g, r in parts["groups"].items()),
            *(("category", c, r) for c, r in parts["categories"].items()),
        ]:
            low, high = r["gain_ci95"]
            count = r["positives"] if r["positives"] is not None else r["rows"]
            lines.append(
                f"| {task} | {kind} {slice_name} | {count} / {r['rows']} | "
                f"{name.upper()} {r[f'multi_{name}']:.3f} | {r[f'single_{name}']:.3f} | "
                f"{r['gain']:+.3f} [{low:+.3f}, {high:+.3f}] | {100 * r['relative_gain']:+.1f}% |"
            )
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(8, 4))
    for k, (task, parts) in enumerate(report["tasks"].items()):
        gains = [100 * r["relative_gain"] for r in parts["categories"].values()]
        ax.scatter([k] * len(gains), gains, alpha=0.6, label=f"{task} ({len(gains)} categories)")
        if "all" in parts["groups"]:
            ax.scatter([k], [100 * parts["groups"]["all"]["relative_gain"]], marker="_", s=600)
    ax.axhspan(5, 15, color="green", alpha=0.1, label="the claim: +5% to +15%")
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_xticks(range(len(report["tasks"])), list(report["tasks"]))
    ax.set_ylabel(f"gain of {report['multi']} over {report['single']} (%; RMSE: error removed)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = ap.add_mutually_exclusive_group(required=True)
    source.add_argument("--results", type=Path, help="benchmarks/taobao_mtl.py JSON")
    source.add_argument("--predictions", type=Path, help="benchmarks/declared_mtl.py parquet")
    ap.add_argument(
        "--training-set", type=Path, default=Path("artifacts/data/training_set.parquet")
    )
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--multi", default="mmoe")
    ap.add_argument("--single", default="single_task")
    ap.add_argument("--min-positives", type=int, default=10)
    ap.add_argument("--min-rows", type=int, default=50, help="a regression task's categories")
    ap.add_argument("--bootstrap", type=int, default=500)
    ap.add_argument("--names", type=Path, help="CSV: category value, ..., label to show")
    ap.add_argument("--out", type=Path, default=Path("reports/benchmarks/per-category"))
    args = ap.parse_args()
    if args.results is not None:
        params = load_params(args.params)
        inputs = from_taobao_mtl(args.results, args.training_set, params, args.multi, args.single)
    else:
        inputs = from_predictions(args.predictions)
    report = comparison(inputs, args.multi, args.single, args)
    if args.names is not None:
        report = named(report, category_names(args.names))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out.with_suffix(".json"), report)
    table = markdown(report)
    args.out.with_suffix(".md").write_text(table + "\n")
    plot(report, args.out.with_suffix(".png"))
    print(table)


if __name__ == "__main__":
    exit_on_error(main)
