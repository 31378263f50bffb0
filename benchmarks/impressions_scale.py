"""A synthetic impression log in a declared schema's file layout (AliExpress's by default: a
search id, 16 categorical and 63 numerical fields, click and conversion, split into a train
and a test file), then `shopguide dataset check` and `shopguide dataset train` on it, each as
its own process: wall time and peak resident memory per step. The labels follow a planted
logistic signal in a few fields, so the trained model has something to find.

    python benchmarks/impressions_scale.py --rows 1000000 --out /tmp/impressions
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from synth_scale import run_step

from shopguide.dataset.schema import load_schema
from shopguide.errors import exit_on_error
from shopguide.io import write_json


def write_impressions(schema_path: Path, rows: int, out: Path, seed: int) -> None:
    """Rows in the schema's unit table layout: ids and categorical fields as Zipf-like
    integer codes, numerical fields standard normal, the first binary task (click) from a
    logistic model of three categorical and three numerical fields, the second (conversion)
    only after a click and from the same signal."""
    schema = load_schema(schema_path)
    table = schema.tables[schema.unit]
    first, second = (schema.tasks[t].column.split(".")[1] for t in list(schema.tasks)[:2])
    rng = np.random.default_rng(seed)
    columns: dict[str, np.ndarray] = {}
    effects, numeric = [], []
    for name, spec in table.columns.items():
        if name in (first, second):
            continue
        if spec.type == "numeric":
            columns[name] = rng.standard_normal(rows).astype(np.float32)
            numeric.append(columns[name])
            continue
        cardinality = max(rows // 20, 2) if spec.type == "id" else int(10 ** rng.uniform(1, 4))
        codes = np.minimum(rng.zipf(1.3, rows) - 1, cardinality - 1)
        columns[name] = codes
        if len(effects) < 3 and spec.type == "categorical":
            effects.append(rng.normal(0, 1, cardinality)[codes])
    logit = sum(effects) + sum(numeric[:3]) - 1.0
    click = rng.random(rows) < 1 / (1 + np.exp(-logit))
    conversion = click & (rng.random(rows) < 1 / (1 + np.exp(-(logit - 3.0))))
    frame = pd.DataFrame(columns).assign(
        **{first: click.astype(np.int8), second: conversion.astype(np.int8)}
    )[list(table.columns)]
    cut = int(rows * 0.8)
    out.mkdir(parents=True, exist_ok=True)
    files = table.files or {"train": table.path}
    frame.iloc[:cut].to_csv(out / files["train"], index=False)
    frame.iloc[cut:].to_csv(out / files["test"], index=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--schema", type=Path, default=Path("datasets/aliexpress.yaml"))
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    write_impressions(args.schema, args.rows, args.out, args.seed)
    cli = [sys.executable, "-m", "shopguide.cli", "dataset"]
    common = ["--root", str(args.out), "--params", str(args.params)]
    steps = [
        run_step(
            "check",
            [*cli, "check", str(args.schema), *common, "--report-dir", str(args.out / "r")],
            args.rows,
        ),
        run_step(
            "train",
            [
                *cli,
                "train",
                str(args.schema),
                *common,
                "--report-dir",
                str(args.out / "r2"),
                "--model-dir",
                str(args.out / "model"),
                "--metrics",
                str(args.out / "metrics.json"),
                "--history",
                str(args.out / "history.csv"),
            ],
            args.rows,
        ),
    ]
    metrics = json.loads((args.out / "metrics.json").read_text())
    report = {
        "rows": args.rows,
        "schema": str(args.schema),
        "steps": steps,
        "test": metrics["test"],
    }
    write_json(args.out / "impressions_scale.json", report)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    exit_on_error(main)
