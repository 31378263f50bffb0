"""The steps after `train` on a synth-scale run (issue 29): the training-set check, `finetune`,
`evaluate` and the gate (its serving check included), each in its own child process with its
wall time and peak resident memory (`synth_scale.run_step`), on the training set of
`benchmarks/synth_scale.py --out DIR` and a model trained on it.

    python benchmarks/synth_scale.py --events 1000000 --out /tmp/synth1m
    python benchmarks/train_loader.py --workdir /tmp/synth1m --epochs 1 --loaders stream \\
        --out /tmp/train-loader.json
    python benchmarks/model_steps_scale.py --workdir /tmp/synth1m \\
        --model /tmp/synth1m/train-stream/model --out benchmarks/results/model-steps-1m.json

Fine-tuning runs `--finetune-epochs` epochs (1 by default: what is measured is the reading, not
the adaptation); the gate holds the candidate to no model floor and a 1 s latency budget, so
it runs its serving check and reaches its promotion branch whatever one epoch learnt.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pyarrow.parquet as pq
import yaml
from synth_scale import run_step

CLI = [sys.executable, "-m", "shopguide.cli"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", type=Path, required=True, help="a synth_scale.py --out")
    parser.add_argument("--model", type=Path, required=True, help="a model trained on it")
    parser.add_argument("--finetune-epochs", type=int, default=1)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    work = args.workdir
    out = work / "model-steps"
    out.mkdir(exist_ok=True)
    raw = yaml.safe_load((work / "params.yaml").read_text())
    raw["finetune"] |= {"max_epochs": args.finetune_epochs, "patience": args.finetune_epochs}
    raw["gate"] |= {
        "auc_floor": dict.fromkeys(raw["protocol"]["tasks"], 0.0),
        "ranking_auc_floor": None,
        "gauc_floor": {},
    }
    raw["gate"]["infra"]["p99_latency_ms"] = 1000  # a loaded 2-core machine; test_gate holds it
    raw["registry"]["path"] = str(out / "registry")
    params = out / "params.yaml"
    params.write_text(yaml.safe_dump(raw))
    sets = ["--training-set", str(work / "training_set.parquet")]
    sets += ["--ranking-set", str(work / "ranking_set.parquet")]
    common = ["--params", str(params)]
    rows = pq.ParquetFile(work / "training_set.parquet").metadata.num_rows
    candidate = out / "candidate"
    steps = {
        "validate-training-set": [
            "validate", "--suite", "training-set", "--input", str(work / "training_set.parquet"),
            "--report-dir", str(out / "validation"),
        ],
        "finetune": [
            "finetune", *sets, "--base-model", str(args.model), "--model-dir", str(candidate),
            "--metrics", str(out / "finetune.json"), "--history", str(out / "finetune.csv"),
        ],
        "evaluate": [
            "evaluate", *sets, "--model-dir", str(candidate),
            "--metrics", str(out / "evaluate.json"), "--roc", str(out / "roc.csv"),
            "--calibration", str(out / "calibration.csv"), "--report", str(out / "report.html"),
        ],
        "gate": [
            "gate", *sets, "--evaluation", str(out / "evaluate.json"),
            "--model-dir", str(candidate), "--repo", str(work / "feature_repo"),
            "--decision", str(out / "decision.json"),
        ],
    }  # fmt: skip
    results = [run_step(name, [*CLI, *step, *common], rows) for name, step in steps.items()]
    decision = json.loads((out / "decision.json").read_text())
    serving = [c for c in decision["checks"] if c["rule"].startswith("serving")]
    summary = {
        "steps": results,
        "gate_passed": decision["passed"],
        "serving_checks_passed": all(c["passed"] for c in serving) and bool(serving),
        "finetune_rows": json.loads((out / "finetune.json").read_text())["finetune_rows"],
    }
    print(json.dumps(summary), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
