"""Protocol taobao-transfer-v1 learning curve, on the real Taobao sample and on synthetic data
with the same design (`shopguide synth`: categories share planted structure; `synthetic-tied`:
one category factor behind every task).

Per dataset and seed: pre-train on the old categories' train exposures; then for budgets of
10/25/50/100% of the new categories' train exposures (by user, nested), score on the new
categories' test exposures: the pre-trained model as is, a model from scratch on the budget,
every transfer strategy, and `auto` (what `finetune.strategy: auto` keeps, chosen among those
runs by shopguide.transfer.choose: best new-category validation AUC without forgetting).
Old-category test AUC is scored too (forgetting = change against the pre-trained model), for
the candidate as `finetune.isolate` saves it and for the tuned network alone (its old-category
scores are what `isolate: false` would serve: one model adapted in place).
Bootstrap 95% intervals of the seed-mean AUC over resampled test exposures. Writes the results
JSON, DVC plot data (<results>/transfer-curve-<dataset>.csv), a PNG and the Markdown tables.

`--folds` repeats the design with each other third of the categories as the new ones
(`finetune.new_category_remainder`; the protocol's fold is the params' own), each fold with its
own pre-trained models, and pools the targets' gaps over the folds: every test exposure is then
a new-category one in exactly one fold, so the pooled gap rests on all the test positives
instead of a third of them.

Every run is cached under --workdir, so an interrupted benchmark resumes where it stopped (and
a workdir built with other params is refused, not reused).

    nice python benchmarks/transfer_curve.py            # --folds 0,1,2 for every fold
"""

from __future__ import annotations

import os

# Idle OpenMP threads sleep instead of spinning (shared cores, see benchmarks/taobao_mtl.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import copy
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from sklearn.metrics import roc_auc_score

from shopguide.config import Params, load_params
from shopguide.errors import exit_on_error
from shopguide.exposures import build_exposures
from shopguide.features import build_features, fresh_repo
from shopguide.ingest import ingest_taobao
from shopguide.io import atomic_path, write_json
from shopguide.metrics import bootstrap_weights, interval, weighted_auc
from shopguide.model.base import MultiTaskModel
from shopguide.model.fit import fit, predict, settings_from_params
from shopguide.model.routed import AnyModel
from shopguide.model.store import load_model
from shopguide.model.tensors import is_new_category, new_category_rule, read_training_set
from shopguide.ranking.queries import build_queries
from shopguide.synth import generate
from shopguide.train import build_model, train_step
from shopguide.transfer import (
    STRATEGIES,
    TransferData,
    adapt,
    choose,
    largest_drop,
    transfer_data,
)
from shopguide.transfer.common import frame_metrics, tensors

log = logging.getLogger("benchmarks.transfer_curve")
ROOT = Path(__file__).resolve().parents[1]
BUDGETS = (0.10, 0.25, 0.50, 1.00)
BASELINES = ("pretrained", "scratch")
# Synthetic data at the Taobao sample's scale (the features step runs Feast for real), in two
# worlds that share users and task weights across categories: `synthetic`, the params' own
# (category effects free in as many dimensions as tasks, correlated through non-negative
# loadings), and `synthetic-tied`, one category factor behind every task's effect.
SCALE = {"events": 150_000, "users": 5_000, "items": 10_000, "categories": 60}
SYNTH = {"synthetic": SCALE, "synthetic-tied": {**SCALE, "category_factor_dim": 1}}
DATASETS = ("taobao", *SYNTH)


def prepare(dataset: str, workdir: Path, params: Params) -> Path:
    """The dataset's training set through the project's own ingest, exposures and features
    steps (built once per workdir)."""
    out = workdir / "training_set.parquet"
    recorded = workdir / "params.json"
    if out.is_file():
        if recorded.is_file() and json.loads(recorded.read_text()) != params.model_dump(
            mode="json"
        ):
            raise SystemExit(
                f"{workdir}: built and cached with other params; remove it or pass another "
                "--workdir"
            )
        return out
    workdir.mkdir(parents=True, exist_ok=True)
    write_json(recorded, params.model_dump(mode="json"))
    raw = Path(params.data.raw_path)
    if dataset in SYNTH:
        raw = workdir / "events.csv"
        generate(raw, workdir / "truth.parquet", params)
    repo = fresh_repo(ROOT / "feature_repo", workdir / "feature_repo")
    events, exposures = workdir / "events.parquet", workdir / "exposures.parquet"
    queries = workdir / "queries.parquet"
    ingest_taobao(raw, events, params.data)
    build_exposures(events, exposures, params)
    build_queries(events, queries, params)
    build_features(events, exposures, queries, repo, out, workdir / "ranking_set.parquet", params)
    return out


def with_seed(params: Params, seed: int) -> Params:
    return params.model_copy(update={"train": params.train.model_copy(update={"seed": seed})})


def with_fold(params: Params, remainder: int) -> Params:
    """The same design with the categories `id % modulo == remainder` as the new ones."""
    update = {"new_category_remainder": remainder}
    return params.model_copy(update={"finetune": params.finetune.model_copy(update=update)})


def fold_name(dataset: str, params: Params, remainder: int) -> str:
    """Results name of a fold: the dataset's own for the protocol's fold (the params')."""
    protocol = remainder == params.finetune.new_category_remainder
    return dataset if protocol else f"{dataset}-fold{remainder}"


def scratch(data: TransferData, params: Params) -> tuple[MultiTaskModel, int]:
    """A fresh model trained on the budget's labelled rows alone, and the rows it processed."""
    torch.manual_seed(params.train.seed)
    model = build_model(data.fit, params)
    result = fit(
        model,
        tensors(model, data.fit),
        tensors(model, data.valid),
        settings_from_params(params.train, model.config.head_names()),
        description="from scratch",
    )
    return model, result.samples


def run_seed(
    training_set: Path,
    frame: pd.DataFrame,
    params: Params,
    seed: int,
    rundir: Path,
    runs: dict,
    save: Callable,
) -> None:
    """Every (budget, method) of one seed that `runs` does not hold yet."""
    p = with_seed(params, seed)
    test = frame[frame["split"] == "test"]
    new = is_new_category(test["category_id"], p.finetune).to_numpy()
    pretrained_dir = rundir / f"seed{seed}" / "pretrained"
    if not pretrained_dir.is_dir():
        train_step(
            training_set,
            pretrained_dir,
            rundir / f"seed{seed}" / "train.json",
            rundir / f"seed{seed}" / "train.csv",
            p,
        )
    base = load_model(pretrained_dir)

    old_valid = transfer_data(frame, p).old_valid
    base_old_valid = frame_metrics(base, old_valid)

    def old_auc(probs: np.ndarray) -> list[float]:
        return [
            float(roc_auc_score(labels, probs[~new, j]))
            for j, labels in enumerate(test.loc[~new, list(p.protocol.tasks)].to_numpy().T)
        ]

    def score(
        model: AnyModel,
        started: float,
        samples: int = 0,
        validation: float | None = None,
        tuned: MultiTaskModel | None = None,
    ) -> dict:
        seconds = time.monotonic() - started
        probs = predict(model, tensors(model, test))
        result = {
            "old_validation_drop": largest_drop(base_old_valid, frame_metrics(model, old_valid)),
            "new_probs": probs[new].tolist(),
            "old_auc": old_auc(probs),
            "validation": validation,
            "seconds": seconds,
            "samples": samples,
        }
        if tuned is not None:  # the strategy's network alone: `isolate: false`
            result["old_auc_shared"] = old_auc(predict(tuned, tensors(tuned, test)))
        return result

    for budget in BUDGETS:
        key = f"{seed}/{budget:g}"
        got = runs.setdefault(key, {})
        data = transfer_data(frame, p, budget)
        got["labelled_rows"] = len(data.fit) + len(data.valid)
        if "pretrained" not in got:
            got["pretrained"] = score(base, time.monotonic())
        if "scratch" not in got:
            started = time.monotonic()
            model, samples = scratch(data, p)
            got["scratch"] = score(model, started, samples)
            save()
        for name in STRATEGIES:
            if name in got:
                continue
            started = time.monotonic()
            adapted = adapt(copy.deepcopy(base), data, p, name)
            got[name] = score(
                adapted.model,
                started,
                adapted.outcome.samples,
                adapted.validation[name],
                adapted.tuned,
            )
            save()


def pick_auto(runs: dict, params: Params, seeds: list[int]) -> None:
    """Add `auto` to each (seed, budget): the pick `finetune.strategy: auto` makes among these
    strategy runs."""
    for r in (runs[f"{s}/{b:g}"] for s in seeds for b in BUDGETS):
        r["auto_choice"] = choose(
            {n: r[n]["validation"] for n in STRATEGIES},
            {n: r[n]["old_validation_drop"] for n in STRATEGIES},
            params.gate.max_old_category_drop,
        )
        r["auto"] = r[r["auto_choice"]]


def summarise(
    runs: dict, frame: pd.DataFrame, params: Params, seeds: list[int], rounds: int
) -> list[dict]:
    """Rows (budget, method, task): seed-mean AUC, its bootstrap interval, old-category change."""
    test = frame[frame["split"] == "test"]
    new = is_new_category(test["category_id"], params.finetune).to_numpy()
    labels = test.loc[new, list(params.protocol.tasks)].to_numpy(np.float64)
    rows = []
    for budget in BUDGETS:
        per_seed = [runs[f"{s}/{budget:g}"] for s in seeds]
        methods = [*BASELINES, *STRATEGIES, "auto"]
        for method in methods:
            for j, task in enumerate(params.protocol.tasks):
                probs = [np.asarray(r[method]["new_probs"])[:, j] for r in per_seed]
                aucs = [roc_auc_score(labels[:, j], pr) for pr in probs]
                draws = seed_mean_draws(labels[:, j], probs, rounds, j)
                low, high = interval(draws, 0.95)
                old = [r[method]["old_auc"][j] - r["pretrained"]["old_auc"][j] for r in per_seed]
                # auto's pick is made with the candidate's drops; with `isolate: false` it
                # would filter on the tuned networks' own and may pick another: not shown
                shared = [
                    r[method]["old_auc_shared"][j] - r["pretrained"]["old_auc"][j]
                    for r in per_seed
                    if "old_auc_shared" in r[method] and method != "auto"
                ]
                rows.append(
                    {
                        "budget_percent": round(budget * 100),
                        "labelled_rows": int(np.mean([r["labelled_rows"] for r in per_seed])),
                        "method": method,
                        "task": task,
                        "auc": float(np.mean(aucs)),
                        "auc_std": float(np.std(aucs)),
                        "auc_low": low,
                        "auc_high": high,
                        "old_auc_change": None if method == "scratch" else float(np.mean(old)),
                        "old_auc_change_shared": float(np.mean(shared)) if shared else None,
                        "seconds": float(np.mean([r[method]["seconds"] for r in per_seed])),
                        "samples": float(np.mean([r[method]["samples"] for r in per_seed])),
                        "auto_choices": [r["auto_choice"] for r in per_seed]
                        if method == "auto"
                        else None,
                    }
                )
    return rows


def efficiency(rows: list[dict]) -> list[dict]:
    """Transfer efficiency in compute: per task and method, the smallest budget whose seed-mean
    new-category AUC reaches the from-scratch model's at 100% of the data, with the wall time
    and the training rows processed by that run against scratch's at 100% (fine-tuning only:
    the pre-training is paid once for every fold of new categories, and the pre-trained
    model's own row costs nothing)."""
    frame = pd.DataFrame(rows)
    out = []
    for task, part in frame.groupby("task", sort=False):
        goal = part[(part["method"] == "scratch") & (part["budget_percent"] == 100)].iloc[0]
        for method, runs in part.groupby("method", sort=False):
            reached = runs[runs["auc"] >= goal["auc"]].sort_values("budget_percent")
            first = reached.iloc[0] if len(reached) else None
            out.append(
                {
                    "task": task,
                    "method": method,
                    "goal_auc": float(goal["auc"]),
                    "goal_seconds": float(goal["seconds"]),
                    "goal_samples": float(goal["samples"]),
                    "budget_percent": None if first is None else int(first["budget_percent"]),
                    "seconds": None if first is None else float(first["seconds"]),
                    "samples": None if first is None else float(first["samples"]),
                }
            )
    return out


def efficiency_markdown(rows: list[dict]) -> str:
    lines = [
        "| task | method | first budget reaching scratch's 100% AUC | its seconds | its rows "
        "processed | scratch at 100%: AUC, seconds, rows processed |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        budget, seconds, samples = r["budget_percent"], r["seconds"], r["samples"]
        first = "never" if budget is None else f"{budget}%"
        took = "-" if seconds is None else f"{seconds:.0f}"
        processed = "-" if samples is None else f"{samples:,.0f}"
        lines.append(
            f"| {r['task']} | {r['method']} | {first} | {took} | {processed} | "
            f"{r['goal_auc']:.3f}, {r['goal_seconds']:.0f}, {r['goal_samples']:,.0f} |"
        )
    return "\n".join(lines)


def seed_mean_draws(
    labels: np.ndarray, probs: list[np.ndarray], rounds: int, task: int
) -> np.ndarray:
    """Bootstrap draws of the seed-mean AUC; the same resamples for every method of a task, so
    two methods' draws subtract into a paired interval of their gap."""
    return np.concatenate(
        [
            np.mean([weighted_auc(labels, pr, w) for pr in probs], axis=0)
            for w in bootstrap_weights(len(labels), rounds, seed=task)
        ]
    )


# The targets: (dataset, tasks or None for all, the budgets, the reference's budget or
# None for the same budget). `best` is the strategy with the highest seed-mean test AUC (what
# "the best strategy" reads as, chosen on the test split); `auto` is chosen on validation.
SYNTHETIC_TARGET = ("best strategy at 25% >= scratch at 100%", None, (0.25,), 1.0)
TARGETS = {
    **dict.fromkeys(SYNTH, SYNTHETIC_TARGET),
    "taobao": ("best strategy > scratch at the same budget", ("cart", "buy"), BUDGETS, None),
}


def targets(
    dataset: str, runs: dict, frame: pd.DataFrame, params: Params, seeds: list[int], rounds: int
) -> list[tuple[dict, np.ndarray]]:
    """Each target's gap (strategy minus scratch; met when positive) with a paired 95% interval,
    and the gap's bootstrap draws (for pooling folds)."""
    name, tasks, budgets, reference_budget = TARGETS[dataset]
    test = frame[frame["split"] == "test"]
    new = is_new_category(test["category_id"], params.finetune).to_numpy()
    all_tasks = params.protocol.tasks
    out = []
    for budget in budgets:
        ref_budget = reference_budget or budget
        for task in tasks or all_tasks:
            j = all_tasks.index(task)
            labels = test.loc[new, task].to_numpy(np.float64)

            def probs(b: float, method: str, j: int = j) -> list[np.ndarray]:
                return [np.asarray(runs[f"{s}/{b:g}"][method]["new_probs"])[:, j] for s in seeds]

            def mean_auc(b: float, method: str, labels: np.ndarray = labels) -> float:
                return float(np.mean([roc_auc_score(labels, pr) for pr in probs(b, method)]))

            best = max(STRATEGIES, key=lambda m: mean_auc(budget, m))
            reference = seed_mean_draws(labels, probs(ref_budget, "scratch"), rounds, j)
            for label, method in (("best", best), ("auto", "auto")):
                gap = seed_mean_draws(labels, probs(budget, method), rounds, j) - reference
                low, high = interval(gap, 0.95)
                diff = mean_auc(budget, method) - mean_auc(ref_budget, "scratch")
                row = {
                    "target": name,
                    "task": task,
                    "budget_percent": round(budget * 100),
                    "reference": f"scratch at {round(ref_budget * 100)}%",
                    "pick": label,
                    "method": method,
                    "auc": mean_auc(budget, method),
                    "reference_auc": mean_auc(ref_budget, "scratch"),
                    "gap": diff,
                    "gap_low": low,
                    "gap_high": high,
                    "met": is_met(diff, reference_budget),
                }
                out.append((row, gap))
    return out


def is_met(gap: float, reference_budget: float | None) -> bool:
    """Reaching scratch at another budget is enough; at the same budget, beating it."""
    return gap >= 0 if reference_budget else gap > 0


def pooled_targets(dataset: str, folds: dict[int, list[tuple[dict, np.ndarray]]]) -> list[dict]:
    """Each target's gap averaged over the folds (each fold's own pick: its best strategy or
    `auto`), with the 95% interval of the mean of the folds' independent bootstrap draws."""
    first = next(iter(folds.values()))
    out = []
    for i, (row, _) in enumerate(first):
        parts = [rows[i] for rows in folds.values()]
        gap = float(np.mean([r["gap"] for r, _ in parts]))
        low, high = interval(np.mean([d for _, d in parts], axis=0), 0.95)
        out.append(
            {
                **{k: row[k] for k in ("target", "task", "budget_percent", "pick")},
                "folds": {
                    str(f): {"method": r["method"], "gap": r["gap"]}
                    for f, (r, _) in zip(folds, parts, strict=True)
                },
                "gap": gap,
                "gap_low": low,
                "gap_high": high,
                "met": is_met(gap, TARGETS[dataset][3]),
            }
        )
    return out


def pooled_markdown(rows: list[dict]) -> str:
    folds = list(rows[0]["folds"])
    lines = [
        f"| target | task | budget | pick | {' | '.join(f'fold {f} gap' for f in folds)} | "
        "mean gap [95% CI] | met |",
        "|---" * (len(folds) + 6) + "|",
    ]
    for r in rows:
        cells = " | ".join(
            f"{v['gap']:+.4f}" + (f" ({v['method']})" if r["pick"] == "best" else "")
            for v in r["folds"].values()
        )
        lines.append(
            f"| {r['target']} | {r['task']} | {r['budget_percent']}% | {r['pick']} | {cells} | "
            f"{r['gap']:+.4f} [{r['gap_low']:+.4f}, {r['gap_high']:+.4f}] | "
            f"{'yes' if r['met'] else 'no'} |"
        )
    return "\n".join(lines)


def targets_markdown(rows: list[dict]) -> str:
    lines = [
        "| target | task | budget | pick | AUC | reference | gap [paired 95% CI] | met |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['target']} | {r['task']} | {r['budget_percent']}% | "
            f"{'auto' if r['pick'] == 'auto' else 'best: ' + r['method']} | {r['auc']:.4f} | "
            f"{r['reference']} {r['reference_auc']:.4f} | "
            f"{r['gap']:+.4f} [{r['gap_low']:+.4f}, {r['gap_high']:+.4f}] | "
            f"{'yes' if r['met'] else 'no'} |"
        )
    return "\n".join(lines)


def reference_aucs(workdir: Path, frame: pd.DataFrame, params: Params) -> dict | None:
    """Synthetic data only, on the new categories' test rows: the Bayes-optimal AUC (the true
    probabilities) and the category-only reference (each category's mean true probability over
    its train exposures: the planted category effects without any user or item factor)."""
    truth = workdir / "truth.parquet"
    if not truth.is_file():
        return None
    tasks = params.protocol.tasks
    new = frame[is_new_category(frame["category_id"], params.finetune)]
    joined = new.merge(pd.read_parquet(truth), on=["user_id", "item_id", "category_id"])
    test = joined[joined["split"] == "test"]
    means = joined[joined["split"] == "train"].groupby("category_id")[[f"p_{t}" for t in tasks]]
    by_category = test[["category_id"]].join(means.mean(), on="category_id")
    return {
        "bayes": {t: float(roc_auc_score(test[t], test[f"p_{t}"])) for t in tasks},
        "category": {t: float(roc_auc_score(test[t], by_category[f"p_{t}"])) for t in tasks},
    }


def plot(rows: list[dict], dataset: str, tasks: tuple[str, ...], path: Path) -> None:
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 4), sharex=True)
    frame = pd.DataFrame(rows)
    for ax, task in zip(np.atleast_1d(axes), tasks, strict=True):
        for method, part in frame[frame["task"] == task].groupby("method", sort=False):
            ax.errorbar(
                part["budget_percent"],
                part["auc"],
                yerr=[part["auc"] - part["auc_low"], part["auc_high"] - part["auc"]],
                label=method,
                marker="o",
                capsize=2,
                linestyle="--" if method in BASELINES else "-",
            )
        ax.set(
            title=f"{dataset}: {task}",
            xlabel="% of new categories' train exposures",
            ylabel="test AUC (new categories)",
            xscale="log",
            xticks=[10, 25, 50, 100],
        )
        ax.set_xticklabels(["10", "25", "50", "100"])
    np.atleast_1d(axes)[0].legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def markdown(rows: list[dict], tasks: tuple[str, ...], references: dict | None) -> str:
    frame = pd.DataFrame(rows)
    head = " | ".join(f"{t} AUC [95% CI]" for t in tasks)
    lines = [
        f"| budget (rows) | method | {head} | old-category AUC change {'/'.join(tasks)} | "
        "same, tuned network alone (`isolate: false`) | s/run |",
        "|---" * (len(tasks) + 5) + "|",
    ]
    for (budget, method), part in frame.groupby(["budget_percent", "method"], sort=False):
        part = part.set_index("task")
        cells = [
            f"{part.at[t, 'auc']:.3f}±{part.at[t, 'auc_std']:.3f} [{part.at[t, 'auc_low']:.3f}, "
            f"{part.at[t, 'auc_high']:.3f}]"
            for t in tasks
        ]
        old = (
            "n/a"
            if method == "scratch"
            else "/".join(f"{part.at[t, 'old_auc_change']:+.4f}" for t in tasks)
        )
        shared = (
            "/".join(f"{part.at[t, 'old_auc_change_shared']:+.4f}" for t in tasks)
            if part["old_auc_change_shared"].notna().all()
            else "n/a"
        )
        name = method
        if method == "auto":
            name += f" ({', '.join(part['auto_choices'].iloc[0])})"
        lines.append(
            f"| {budget}% ({part['labelled_rows'].iloc[0]}) | {name} | {' | '.join(cells)} | "
            f"{old} | {shared} | {part['seconds'].iloc[0]:.0f} |"
        )
    if references:
        words = {
            "bayes": "Bayes-optimal AUC (true probabilities)",
            "category": "Category-only reference (each category's mean true probability over "
            "its train exposures)",
        }
        for key, text in words.items():
            values = ", ".join(f"{t} {v:.3f}" for t, v in references[key].items())
            lines += ["", f"{text} on the same test exposures: {values}"]
    return "\n".join(lines)


def run_fold(
    dataset: str,
    name: str,
    training_set: Path,
    frame: pd.DataFrame,
    params: Params,
    rundir: Path,
    seeds: list[int],
    args: argparse.Namespace,
) -> list[tuple[dict, np.ndarray]]:
    """One fold's learning curve (runs cached in `rundir`), written under `name`; returns the
    targets' rows and gap draws."""
    new = is_new_category(frame["category_id"], params.finetune)
    log.info(
        "%s (%s): new-category exposures train %d, test %d",
        name,
        new_category_rule(params.finetune),
        int((new & (frame["split"] == "train")).sum()),
        int((new & (frame["split"] == "test")).sum()),
    )
    cache = rundir / "runs.json"
    runs = json.loads(cache.read_text()) if cache.is_file() else {}

    def save() -> None:
        rundir.mkdir(parents=True, exist_ok=True)
        with atomic_path(cache) as tmp:
            tmp.write_text(json.dumps(runs))

    started = time.monotonic()
    for seed in seeds:
        run_seed(training_set, frame, params, seed, rundir, runs, save)
    pick_auto(runs, params, seeds)
    rows = summarise(runs, frame, params, seeds, args.bootstrap)
    checks = targets(dataset, runs, frame, params, seeds, args.bootstrap)
    references = reference_aucs(training_set.parent, frame, params)
    tasks = params.protocol.tasks
    write_json(
        args.results / f"transfer-curve-{name}.json",
        {
            "protocol": "taobao-transfer-v1",
            "dataset": dataset,
            "new_categories": new_category_rule(params.finetune),
            "seeds": seeds,
            "bootstrap": args.bootstrap,
            "rows": rows,
            "targets": [row for row, _ in checks],
            "efficiency": efficiency(rows),
            "bayes_auc": references and references["bayes"],
            "category_reference_auc": references and references["category"],
            "minutes": (time.monotonic() - started) / 60,
        },
    )
    csv = pd.DataFrame(rows)[
        [
            "budget_percent",
            "method",
            "task",
            "auc",
            "auc_low",
            "auc_high",
            "old_auc_change",
            "old_auc_change_shared",
        ]
    ]
    with atomic_path(args.results / f"transfer-curve-{name}.csv") as tmp:
        csv.to_csv(tmp, index=False)
    plot(rows, name, tasks, args.results / f"transfer-curve-{name}.png")
    table = markdown(rows, tasks, references)
    table += "\n\nTargets:\n\n" + targets_markdown([row for row, _ in checks])
    table += "\n\nCompute to reach scratch's 100% AUC:\n\n" + efficiency_markdown(efficiency(rows))
    (args.results / f"transfer-curve-{name}.md").write_text(table + "\n")
    print(f"\n## {name}\n{table}\n")
    return checks


def integers(text: str) -> list[int]:
    """A comma-separated list of integers, for argparse (sorted, without repeats)."""
    try:
        return sorted({int(part) for part in text.split(",")})
    except ValueError:
        raise argparse.ArgumentTypeError(f"not integers separated by commas: {text!r}") from None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", default="taobao,synthetic", help=f"of {', '.join(DATASETS)}")
    ap.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    ap.add_argument("--seeds", type=integers, default=[1, 2, 3])
    ap.add_argument("--bootstrap", type=int, default=500)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/shopguide-transfer-curve"))
    ap.add_argument("--results", type=Path, default=ROOT / "benchmarks/results")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--folds",
        type=integers,
        help="new-category remainders to run (e.g. 0,1,2) and pool; default: the params' own",
    )
    args = ap.parse_args()
    unknown = set(args.datasets.split(",")) - set(DATASETS)
    if unknown:
        ap.error(f"--datasets: unknown {sorted(unknown)}; choose from {', '.join(DATASETS)}")
    base = load_params(args.params)
    modulo = base.finetune.new_category_modulo
    folds = [base.finetune.new_category_remainder]
    if args.folds:
        if base.finetune.new_category_ids:
            ap.error("--folds: finetune.new_category_ids names the new categories; leave it empty")
        folds = args.folds
        if not all(0 <= f < modulo for f in folds):
            ap.error(f"--folds: remainders of category_id % {modulo} run from 0 to {modulo - 1}")
    torch.set_num_threads(args.threads)
    seeds = args.seeds
    for dataset in args.datasets.split(","):
        params = base
        if dataset in SYNTH:
            synth = base.synth.model_copy(update=SYNTH[dataset])
            params = base.model_copy(update={"synth": synth})
        workdir = args.workdir / dataset
        training_set = prepare(dataset, workdir, params)
        frame = read_training_set(training_set)
        gaps = {}
        for fold in folds:
            name = fold_name(dataset, params, fold)
            rundir = workdir if name == dataset else workdir / f"fold{fold}"
            gaps[fold] = run_fold(
                dataset, name, training_set, frame, with_fold(params, fold), rundir, seeds, args
            )
        if len(folds) > 1:
            pooled = pooled_targets(dataset, gaps)
            write_json(
                args.results / f"transfer-curve-{dataset}-folds.json",
                {"dataset": dataset, "folds": folds, "seeds": seeds, "targets": pooled},
            )
            table = pooled_markdown(pooled)
            (args.results / f"transfer-curve-{dataset}-folds.md").write_text(table + "\n")
            print(f"\n## {dataset}, {len(folds)} folds pooled\n{table}\n")


if __name__ == "__main__":
    exit_on_error(main)
