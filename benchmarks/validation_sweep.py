"""Training settings compared on the validation slice only (the test split is never read, so it
stays out of every choice of a default).

Each variant overrides `params.yaml` (`--set section.key=value`, YAML values), trains the
pipeline's model on the train split's old-category examples and training queries exactly as
`shopguide train` does, and reports on the validation slice (the last `train.validation_fraction`
of those rows by t0): MRR and within-query AUC of its taobao-rank-v1 training queries (moments
with exactly one acted item), and GAUC and pooled AUC of its exposures.

    nice python benchmarks/validation_sweep.py --set train.selection=gauc   # after `dvc repro`

Prints one JSON line per run and appends it to <out> (default reports/benchmarks/sweep.jsonl).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see benchmarks/taobao_mtl.py

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from synth_scale import add_overrides, apply_overrides
from taobao_rank import add_data_arguments

from shopguide.config import Params, load_params
from shopguide.errors import exit_on_error
from shopguide.metrics import task_metrics
from shopguide.model.fit import fit, predict, settings_from_params
from shopguide.model.tensors import exposures_of, is_new_category, time_split, to_tensors
from shopguide.ranking.metrics import query_scores
from shopguide.train import build_model, training_examples


def query_figures(valid_part, valid, probs: np.ndarray, tasks: tuple[str, ...]) -> dict:
    """MRR and within-query AUC per task over the validation slice's training queries."""
    out: dict[str, float] = {}
    query = valid_part["ranking_query"].to_numpy(bool)
    for j, task in enumerate(tasks):
        y = valid.labels[:, j].numpy()
        rows = np.flatnonzero(query & ~np.isnan(y))
        if not len(rows):
            continue
        groups = valid.group.numpy()[rows]
        _, owner = np.unique(groups, return_inverse=True)
        one = (np.bincount(owner, weights=y[rows]) == 1)[owner]
        rows, groups = rows[one], groups[one]
        scores = query_scores(groups, valid.user.numpy()[rows], y[rows].astype(int), probs[rows, j])
        out[f"{task}_mrr"] = round(float(scores.values["mrr"].mean()), 3)
        out[f"{task}_query_auc"] = round(float(scores.values["auc"].mean()), 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_arguments(ap)
    add_overrides(ap)
    ap.add_argument("--out", type=Path, default=Path("reports/benchmarks/sweep.jsonl"))
    args = ap.parse_args()
    torch.set_num_threads(2)
    raw = load_params(args.params).model_dump(mode="json")
    apply_overrides(raw, args.set)
    params = Params.model_validate(raw)
    frame = training_examples(args.training_set, args.ranking_set, params)
    old = frame[
        (frame["split"] == "train") & ~is_new_category(frame["category_id"], params.finetune)
    ]
    fit_part, valid_part = time_split(old, params.train.validation_fraction)
    torch.manual_seed(params.train.seed)
    model = build_model(fit_part, params)
    heads = model.config.head_names()
    valid = to_tensors(valid_part, heads, model.config)
    started = time.perf_counter()
    result = fit(
        model,
        to_tensors(fit_part, heads, model.config, params.train.listwise_group_s),
        valid,
        settings_from_params(params.train, heads),
        description="sweep",
    )
    tasks = model.config.tasks
    probs = predict(model, valid)
    row = {
        "set": args.set,
        "best_epoch": result.best_epoch,
        "fit_seconds": round(time.perf_counter() - started),
    }
    row |= query_figures(valid_part, valid, probs, tasks)
    exposed = exposures_of(valid_part) & ~valid_part["ranking_query"].to_numpy(bool)
    metrics = task_metrics(
        valid.labels[exposed].numpy()[:, : len(tasks)],
        probs[exposed],
        tasks,
        users=valid.user.numpy()[exposed],
    )
    for task, m in metrics.items():
        row[f"{task}_gauc"] = None if m["gauc"] is None else round(m["gauc"], 3)
        row[f"{task}_auc"] = None if m["auc"] is None else round(m["auc"], 3)
    line = json.dumps(row)
    print(line, flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a") as f:
        f.write(line + "\n")


if __name__ == "__main__":
    exit_on_error(main)
