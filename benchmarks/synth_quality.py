"""Protocol synth-scale, model quality: train and evaluate the project's model on a synth run
(the output dir of benchmarks/synth_scale.py) and put its test AUC next to the Bayes-optimal AUC
of the same test exposures (<run>/bayes.json).

The model pre-trains on every category (`finetune.new_category_ids: [-1]`): the Bayes AUC covers
all test exposures, so holding a third of the categories out for transfer would not compare.
Usage: nice python benchmarks/synth_quality.py --run /tmp/synth10m --out /tmp/synthq
[--epochs 3 --batch-size 4096 --set model.item_buckets=1000003 ...]
(epochs bound the wall time; early stopping still applies; --set overrides any params key)
Writes <out>/synth_quality.json and benchmarks/results/synth-quality-<events>-seed<seed>.json
(<events>-<users>u[-<items>i] for a world other than the default, synth_scale.py --users/--items).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import pandas as pd
import yaml
from sklearn.metrics import roc_auc_score
from synth_scale import CLI, ROOT, add_overrides, apply_overrides, density_suffix, run_step

from shopguide.config import load_params
from shopguide.duck import connect, sql_path
from shopguide.io import write_json


def category_oracle_auc(run: Path, params: Path) -> dict[str, float]:
    """Test AUC of each category's mean true probability over the training exposures: what
    knowing the planted category effects, but no user or item factor, is worth."""
    p = load_params(params)
    tasks = p.protocol.tasks
    means = ", ".join(f"avg(p.p_{t}) AS m_{t}" for t in tasks)
    joined = f"""read_parquet({sql_path(run / "training_set.parquet")}) x
        JOIN read_parquet({sql_path(run / "truth.parquet")}) p USING (user_id, item_id)"""
    frame = (
        connect(p.data)
        .execute(
            f"""WITH m AS (SELECT x.category_id, {means} FROM {joined}
                WHERE x.split = 'train' GROUP BY x.category_id)
            SELECT {", ".join(f"x.{t}, m.m_{t}" for t in tasks)} FROM {joined}
            JOIN m ON m.category_id = x.category_id WHERE x.split = 'test'"""
        )
        .fetchnumpy()
    )
    return {t: round(float(roc_auc_score(frame[t], frame[f"m_{t}"])), 4) for t in tasks}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--bootstrap-samples", type=int, default=100)
    add_overrides(parser)
    a = parser.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    run, out = a.run.resolve(), a.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    raw = yaml.safe_load((run / "params.yaml").read_text())
    raw["train"].update(max_epochs=a.epochs, batch_size=a.batch_size)
    raw["finetune"]["new_category_ids"] = [-1]
    raw["evaluation"]["bootstrap_samples"] = a.bootstrap_samples
    raw["validation"]["report_dir"] = str(out / "validation")
    apply_overrides(raw, a.set)
    params = out / "params.yaml"
    params.write_text(yaml.safe_dump(raw))
    training_set, model = run / "training_set.parquet", out / "model"
    test_rows = int(pd.read_parquet(training_set, columns=["split"])["split"].eq("test").sum())
    p = ["--params", str(params), "--training-set", str(training_set), "--model-dir", str(model)]
    train = run_step(
        "train",
        [
            *CLI,
            "train",
            *p,
            "--metrics",
            str(out / "train.json"),
            "--history",
            str(out / "history.csv"),
        ],
        0,
    )
    fit = json.loads((out / "train.json").read_text())
    epochs = len(pd.read_csv(out / "history.csv"))
    train.update(
        rows=fit["train_rows"],
        epochs=epochs,
        best_epoch=fit["best_epoch"],
        samples_per_s=round(fit["train_rows"] * epochs / train["wall_s"]),
    )
    del train["rows_per_s"]
    evaluate = run_step(
        "evaluate",
        [
            *CLI,
            "evaluate",
            *p,
            "--metrics",
            str(out / "evaluate.json"),
            "--roc",
            str(out / "roc.csv"),
            "--calibration",
            str(out / "calibration.csv"),
            "--report",
            str(out / "report.html"),
        ],
        test_rows,
    )
    metrics = json.loads((out / "evaluate.json").read_text())
    bayes = json.loads((run / "bayes.json").read_text())
    if bayes["test_exposures"] != test_rows:
        raise SystemExit(
            f"bayes.json covers {bayes['test_exposures']} test exposures, not {test_rows}"
        )
    tasks = raw["protocol"]["tasks"]
    # None where the run's truth.parquet has been cleaned up since.
    oracle = (
        category_oracle_auc(run, params)
        if (run / "truth.parquet").is_file()
        else dict.fromkeys(tasks)
    )
    auc = {
        t: {
            "model": round(metrics["overall"][t]["auc"], 4),
            "bayes": round(bayes[t], 4),
            "gap": round(bayes[t] - metrics["overall"][t]["auc"], 4),
            "category_oracle": oracle[t],
            "model_ci95": metrics["overall"][t].get("auc_ci"),
        }
        for t in tasks
    }
    report = {
        "protocol": "synth-scale",
        "run": str(run),
        "model": fit["model"],
        "test_exposures": test_rows,
        "overrides": a.set,
        "steps": [train, evaluate],
        "auc": auc,
        "max_gap": max(v["gap"] for v in auc.values()),
    }
    write_json(out / "synth_quality.json", report)
    synth = raw["synth"]
    name = f"synth-quality-{synth['events']}{density_suffix(synth)}-seed{raw['train']['seed']}.json"
    write_json(ROOT / "benchmarks/results" / name, report)
    print(json.dumps({"auc": auc, "max_gap": report["max_gap"]}))


if __name__ == "__main__":
    main()
