"""Protocol taobao-mtl-v1: every model of the zoo, several seeds, test AUC and log loss per task
with bootstrap 95% intervals on the test exposures. Trains on all categories' training examples
(exposures and the items sampled beside them; the last 15% by t0 is the early-stopping slice).
Results are saved after every run, and a rerun skips the (model, seed) pairs already in the
results file. For taobao-mtl-v1's own labels, build the training set with
`protocol.label_horizon_s: null`.

    nice python benchmarks/taobao_mtl.py --training-set artifacts/data/training_set.parquet
"""

from __future__ import annotations

import os

# Idle OpenMP threads sleep instead of spinning: on a shared CPU, spinning threads multiply a
# step's CPU time several-fold (measured: 1.1 s vs 0.07 s of CPU per MMoE step on 2 busy cores).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import logging
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from shopguide.config import load_params
from shopguide.errors import exit_on_error
from shopguide.io import write_json
from shopguide.metrics import task_metrics
from shopguide.model.fit import aux_metrics, fit, predict, settings_from_params
from shopguide.model.tensors import exposures_of, read_training_set, time_split, to_tensors
from shopguide.model.zoo import MODELS
from shopguide.train import build_model

log = logging.getLogger("benchmarks.taobao_mtl")


def bootstrap_auc(labels: np.ndarray, probs: list[np.ndarray], rounds: int, seed: int) -> list:
    """95% interval of the seed-mean AUC over test sets resampled with replacement."""
    rng = np.random.default_rng(seed)
    stats = []
    for _ in range(rounds):
        idx = rng.integers(0, len(labels), len(labels))
        if 0 < labels[idx].sum() < len(idx):
            stats.append(np.mean([roc_auc_score(labels[idx], p[idx]) for p in probs]))
    return [float(np.percentile(stats, 2.5)), float(np.percentile(stats, 97.5))]


def judged(labels: np.ndarray, tasks: tuple[str, ...]) -> list[str]:
    """The tasks with both classes among the test exposures' known labels (`click` is 1 on
    every exposure; censored labels are NaN)."""
    out = []
    for j, task in enumerate(tasks):
        known = labels[~np.isnan(labels[:, j]), j]
        if 0 < known.sum() < len(known):
            out.append(task)
    return out


def summarise(runs: dict, labels: np.ndarray, tasks: tuple[str, ...], rounds: int) -> dict:
    table = {}
    for name, seeds in runs.items():
        row = {"seeds": sorted(seeds), "tasks": {}}
        for j, task in enumerate(tasks):
            if task not in judged(labels, tasks):
                continue
            known = ~np.isnan(labels[:, j])
            aucs = [r["metrics"][task]["auc"] for r in seeds.values()]
            losses = [r["metrics"][task]["logloss"] for r in seeds.values()]
            probs = [np.asarray(r["probs"])[known, j] for r in seeds.values()]
            row["tasks"][task] = {
                "auc_mean": float(np.mean(aucs)),
                "auc_std": float(np.std(aucs)),
                "auc_ci95": bootstrap_auc(labels[known, j], probs, rounds, seed=j),
                "logloss_mean": float(np.mean(losses)),
                "gauc_mean": float(
                    np.mean([r["metrics"][task].get("gauc") for r in seeds.values()])
                ),
            }
        row["mean_auc"] = float(np.mean([t["auc_mean"] for t in row["tasks"].values()]))
        aux = [r.get("aux", {}) for r in seeds.values()]
        row["aux"] = {  # auxiliary tasks: the mean of each metric over seeds
            task: {
                metric: float(np.mean([a[task][metric] for a in aux]))
                for metric, value in metrics.items()
                if isinstance(value, float)
            }
            for task, metrics in aux[0].items()
        }
        row["seconds_per_run"] = float(np.mean([r["seconds"] for r in seeds.values()]))
        table[name] = row
    return table


def markdown(table: dict, tasks: tuple[str, ...]) -> str:
    head = " | ".join(f"{t} AUC [95% CI]" for t in tasks)
    loss = " / ".join(tasks)
    lines = [
        f"| model | {head} | mean AUC | log loss {loss} | s/run |",
        "|---" * (len(tasks) + 4) + "|",
    ]
    for name, row in sorted(table.items(), key=lambda kv: -kv[1]["mean_auc"]):
        per_task = [row["tasks"][t] for t in tasks]  # in task order (JSON sorts the keys)
        cells = [
            f"{m['auc_mean']:.3f}±{m['auc_std']:.3f} "
            f"[{m['auc_ci95'][0]:.3f}, {m['auc_ci95'][1]:.3f}]"
            for m in per_task
        ]
        losses = "/".join(f"{m['logloss_mean']:.3f}" for m in per_task)
        lines.append(
            f"| {name} | {' | '.join(cells)} | {row['mean_auc']:.3f} | {losses} | "
            f"{row['seconds_per_run']:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--training-set", type=Path, default=Path("artifacts/data/training_set.parquet")
    )
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--seeds", default="1,2,3")
    # Defaults: the train.* settings of --params.
    ap.add_argument("--max-epochs", type=int)
    ap.add_argument("--patience", type=int)
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--learning-rate", type=float)
    ap.add_argument("--bootstrap", type=int, default=200)
    ap.add_argument("--out", type=Path, default=Path("reports/benchmarks/taobao_mtl_v1.json"))
    args = ap.parse_args()
    torch.set_num_threads(2)
    params = load_params(args.params)
    for field in ("max_epochs", "patience", "batch_size", "learning_rate"):
        if getattr(args, field) is None:
            setattr(args, field, getattr(params.train, field))
    tasks = params.protocol.tasks
    frame = read_training_set(args.training_set)
    train, test = frame[frame["split"] == "train"], frame[frame["split"] == "test"]
    test = test[exposures_of(test)]  # the protocol's test exposures, not the sampled items
    fit_part, valid_part = time_split(train, params.train.validation_fraction)
    log.info("train %d (fit %d), test %d exposures", len(train), len(fit_part), len(test))
    done = json.loads(args.out.read_text()) if args.out.is_file() else {"runs": {}}
    runs: dict = done["runs"]
    for name in args.models.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            if str(seed) in runs.get(name, {}):
                continue
            p = params.model_copy(
                update={
                    "model": params.model.model_copy(update={"name": name}),
                    "train": params.train.model_copy(update={"seed": seed}),
                }
            )
            torch.manual_seed(seed)
            model = build_model(fit_part, p)
            dense, heads = model.config, model.config.head_names()
            settings = replace(
                settings_from_params(p.train, heads),
                max_epochs=args.max_epochs,
                patience=args.patience,
                batch_size=args.batch_size,
                learning_rate=args.learning_rate,
            )
            start = time.perf_counter()
            result = fit(
                model,
                to_tensors(fit_part, heads, dense),
                to_tensors(valid_part, heads, dense),
                settings,
                description=f"{name} seed {seed}",
            )
            seconds = time.perf_counter() - start
            test_tensors = to_tensors(test, heads, dense)
            probs = predict(model, test_tensors)
            metrics = task_metrics(
                test_tensors.labels[:, : len(tasks)].numpy(),
                probs,
                tasks,
                users=test_tensors.user.numpy(),
            )
            runs.setdefault(name, {})[str(seed)] = {
                "metrics": metrics,
                "aux": aux_metrics(model, test_tensors),
                "best_epoch": result.best_epoch,
                "seconds": seconds,
                "probs": np.round(probs, 6).tolist(),
            }
            log.info(
                "%s seed %d: %s",
                name,
                seed,
                {t: round(m["auc"], 4) for t, m in metrics.items() if m["auc"] is not None},
            )
            write_json(args.out, {"runs": runs})
    labels = test[list(tasks)].to_numpy(np.float32)
    table = summarise(runs, labels, tasks, args.bootstrap)
    tasks = tuple(judged(labels, tasks))
    settings_note = {
        "max_epochs": args.max_epochs,
        "patience": args.patience,
        "batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
    }
    write_json(args.out.with_suffix(".summary.json"), {"settings": settings_note, "table": table})
    log.info("results table\n%s", markdown(table, tasks))


if __name__ == "__main__":
    exit_on_error(main)
