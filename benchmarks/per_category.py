"""Multi-task against single-task per category (issue 30's claim "multi-task beats single-task
by 5-15% in every category"), from two models' runs of `benchmarks/taobao_mtl.py` on the same
test exposures and seeds.

Per task: every category with at least --min-positives positives (and one negative) among the
test exposures' known labels gets both models' AUC (the mean of their seeds' AUCs) and the
relative gain; categories are also pooled by head / torso / tail (training exposures,
`evaluation.category_group_shares`), with a 95% paired bootstrap interval of the gain over
resampled test rows. Writes JSON, a Markdown table and a PNG of the per-category gains.

    python benchmarks/taobao_mtl.py --models mmoe,single_task --out R.json
    python benchmarks/per_category.py --results R.json --out benchmarks/results/per-category
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from shopguide.config import load_params
from shopguide.errors import exit_on_error
from shopguide.evaluate import GROUPS, category_groups
from shopguide.io import write_json
from shopguide.metrics import bootstrap_weights, interval, weighted_auc
from shopguide.model.tensors import exposures_of, read_training_set


def mean_auc(labels: np.ndarray, seeds: list[np.ndarray], weights: np.ndarray) -> np.ndarray:
    """Per row of `weights`, the mean over seeds of each seed's AUC."""
    return np.mean([weighted_auc(labels, p, weights) for p in seeds], axis=0)


def compare(
    labels: np.ndarray, multi: list[np.ndarray], single: list[np.ndarray], rounds: int, seed: int
) -> dict:
    """Both AUCs, the gain (absolute and relative) and the gain's 95% paired interval."""
    ones = np.ones((1, len(labels)))
    a, b = float(mean_auc(labels, multi, ones)[0]), float(mean_auc(labels, single, ones)[0])
    gains = np.concatenate(
        [
            mean_auc(labels, multi, w) - mean_auc(labels, single, w)
            for w in bootstrap_weights(len(labels), rounds, seed)
        ]
    )
    low, high = interval(gains, 0.95)
    return {
        "positives": int(labels.sum()),
        "rows": len(labels),
        "multi_auc": a,
        "single_auc": b,
        "gain": a - b,
        "relative_gain": (a - b) / b,
        "gain_ci95": [low, high],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, required=True, help="benchmarks/taobao_mtl.py JSON")
    ap.add_argument(
        "--training-set", type=Path, default=Path("artifacts/data/training_set.parquet")
    )
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--multi", default="mmoe")
    ap.add_argument("--single", default="single_task")
    ap.add_argument("--min-positives", type=int, default=10)
    ap.add_argument("--bootstrap", type=int, default=500)
    ap.add_argument("--out", type=Path, default=Path("reports/benchmarks/per-category"))
    args = ap.parse_args()
    params = load_params(args.params)
    runs = json.loads(args.results.read_text())["runs"]
    seeds = sorted(set(runs[args.multi]) & set(runs[args.single]))
    if not seeds:
        raise SystemExit(f"{args.results}: no seed run for both {args.multi} and {args.single}")
    frame = read_training_set(args.training_set)
    train, test = frame[frame["split"] == "train"], frame[frame["split"] == "test"]
    test = test[exposures_of(test)]  # the rows taobao_mtl.py scored, in its order
    groups = category_groups(train[exposures_of(train)], params.evaluation.category_group_shares)
    category = test["category_id"].to_numpy()
    group = test["category_id"].map(groups).fillna("tail").to_numpy()
    probs = {m: [np.asarray(runs[m][s]["probs"]) for s in seeds] for m in (args.multi, args.single)}
    report: dict = {"seeds": seeds, "multi": args.multi, "single": args.single, "tasks": {}}
    for j, task in enumerate(params.protocol.tasks):
        labels = test[task].to_numpy(dtype=float)
        known = ~np.isnan(labels)
        if not 0 < labels[known].sum() < known.sum():
            continue
        by_category, by_group = {}, {}
        for c in np.unique(category[known]):
            rows = known & (category == c)
            if labels[rows].sum() >= args.min_positives and labels[rows].min() == 0:
                by_category[str(c)] = compare(
                    labels[rows],
                    [p[rows, j] for p in probs[args.multi]],
                    [p[rows, j] for p in probs[args.single]],
                    args.bootstrap,
                    seed=j,
                )
        for g in [*GROUPS, "all"]:
            rows = known & ((group == g) if g != "all" else True)
            if 0 < labels[rows].sum() < rows.sum():
                by_group[g] = compare(
                    labels[rows],
                    [p[rows, j] for p in probs[args.multi]],
                    [p[rows, j] for p in probs[args.single]],
                    args.bootstrap,
                    seed=j,
                )
        report["tasks"][task] = {"categories": by_category, "groups": by_group}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out.with_suffix(".json"), report)
    lines = [
        f"| task | slice | positives / rows | {args.multi} AUC | {args.single} AUC | "
        "gain [95% CI] | relative |",
        "|---|---|---|---|---|---|---|",
    ]
    for task, parts in report["tasks"].items():
        for kind, name, r in [
            *(("group", g, r) for g, r in parts["groups"].items()),
            *(("category", c, r) for c, r in parts["categories"].items()),
        ]:
            low, high = r["gain_ci95"]
            lines.append(
                f"| {task} | {kind} {name} | {r['positives']} / {r['rows']} | "
                f"{r['multi_auc']:.3f} | {r['single_auc']:.3f} | {r['gain']:+.3f} "
                f"[{low:+.3f}, {high:+.3f}] | {100 * r['relative_gain']:+.1f}% |"
            )
    table = "\n".join(lines)
    args.out.with_suffix(".md").write_text(table + "\n")
    fig, ax = plt.subplots(figsize=(8, 4))
    for k, (task, parts) in enumerate(report["tasks"].items()):
        gains = [100 * r["relative_gain"] for r in parts["categories"].values()]
        ax.scatter([k] * len(gains), gains, alpha=0.6, label=f"{task} ({len(gains)} categories)")
        if "all" in parts["groups"]:
            ax.scatter([k], [100 * parts["groups"]["all"]["relative_gain"]], marker="_", s=600)
    ax.axhspan(5, 15, color="green", alpha=0.1, label="the claim: +5% to +15%")
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_xticks(range(len(report["tasks"])), list(report["tasks"]))
    ax.set_ylabel(f"AUC gain of {args.multi} over {args.single} (%)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(args.out.with_suffix(".png"), dpi=120)
    print(table)


if __name__ == "__main__":
    exit_on_error(main)
