"""`shopguide train` with the training set streamed against held in memory (issue 29): peak
resident memory of the whole step and training samples/s, each loader in its own child process
(os.wait4), one after the other on the same machine.

samples/s is the fit rows of the epochs over their training time (the `seconds` column of
the history: the epoch's steps, without its validation pass).

    python benchmarks/synth_scale.py --events 10000000 --out /tmp/synth10m
    python benchmarks/train_loader.py --workdir /tmp/synth10m --epochs 1 \
        --out benchmarks/results/train-loader-10m.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import yaml
from synth_scale import run_step

CLI = [sys.executable, "-m", "shopguide.cli"]


def run_train(workdir: Path, loader: str, epochs: int, buffer_rows: int | None) -> dict:
    """One `shopguide train` on the run in `workdir` with `loader`; its figures."""
    out = workdir / f"train-{loader}"
    out.mkdir(exist_ok=True)
    raw = yaml.safe_load((workdir / "params.yaml").read_text())
    raw["train"] |= {"loader": loader, "max_epochs": epochs, "patience": epochs}
    if buffer_rows:
        raw["train"]["shuffle_buffer_rows"] = buffer_rows
    params = out / "params.yaml"
    params.write_text(yaml.safe_dump(raw))
    args = [*CLI, "train", "--params", str(params), "--model-dir", str(out / "model")]
    args += ["--training-set", str(workdir / "training_set.parquet")]
    args += ["--ranking-set", str(workdir / "ranking_set.parquet")]
    args += ["--metrics", str(out / "train.json"), "--history", str(out / "history.csv")]
    rows = pq.ParquetFile(workdir / "training_set.parquet").metadata.num_rows
    step = run_step(f"train-{loader}", args, rows)
    history = pd.read_csv(out / "history.csv")
    metrics = json.loads((out / "train.json").read_text())
    result = {
        "loader": loader,
        "buffer_rows": raw["train"].get("shuffle_buffer_rows"),
        "wall_s": step["wall_s"],
        "peak_rss_gib": step["peak_rss_gb"],  # ru_maxrss KiB / 1024**2: GiB
        "train_rows": metrics["train_rows"],
        "epochs": len(history),
        "samples_per_s": round(history["samples"].sum() / history["seconds"].sum()),
        "validation_auc": {t: round(m["auc"], 4) for t, m in metrics["validation"].items()},
        "load_avg_1m": step["load_avg_1m"],
    }
    print(json.dumps(result), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", type=Path, required=True, help="a synth_scale.py --out")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--buffer-rows", type=int, help="default: the params' own")
    parser.add_argument("--loaders", nargs="+", default=["memory", "stream"])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    runs = [
        run_train(args.workdir, loader, args.epochs, args.buffer_rows) for loader in args.loaders
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(runs, indent=2) + "\n")


if __name__ == "__main__":
    main()
