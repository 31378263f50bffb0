"""Training throughput (samples/s) of shopguide's engine for one model on one device, with the
peak memory it took: the figure behind issue 4's GPU target (MMoE, 10M synthetic events).

The timed run is `fit` as `shopguide train` runs it (whole-table tensors, pinned and copied to
the GPU once, bf16 autocast there, the per-epoch validation on 1,024 rows); a one-epoch run on
a slice first pays CUDA's and the allocator's start-up, which is no cost of training.

    python benchmarks/synth_scale.py --events 10000000 --out /tmp/synth10m
    python benchmarks/train_throughput.py --training-set /tmp/synth10m/training_set.parquet \
        --params /tmp/synth10m/params.yaml --device cuda --batch-size 65536
"""

from __future__ import annotations

import argparse
import logging
import resource
import statistics
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd
import torch

from shopguide.config import Params, load_params
from shopguide.errors import exit_on_error
from shopguide.io import write_json
from shopguide.model.fit import fit, resolve_device, settings_from_params
from shopguide.model.tensors import read_training_set, to_tensors
from shopguide.train import build_model

log = logging.getLogger("benchmarks.train_throughput")


def fit_seconds(frame: pd.DataFrame, params: Params, epochs: int) -> float:
    """Seconds for `epochs` epochs of `fit` on `frame` (its per-epoch validation on 1,024 rows
    included), with the model and device `params` name."""
    tasks = params.protocol.tasks
    model = build_model(frame, params)
    data = to_tensors(frame, tasks, model.config)
    valid = data.take(torch.arange(min(1024, len(data))))
    settings = replace(
        settings_from_params(params.train, tasks), max_epochs=epochs, patience=epochs
    )
    start = time.perf_counter()
    fit(model, data, valid, settings, description=f"{params.model.name} throughput")
    if settings.device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def with_overrides(params: Params, model: str, batch_size: int | None, device: str) -> Params:
    return params.model_copy(
        update={
            "model": params.model.model_copy(update={"name": model}),
            "train": params.train.model_copy(
                update={"batch_size": batch_size or params.train.batch_size, "device": device}
            ),
        }
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--training-set", type=Path, default=Path("artifacts/data/training_set.parquet")
    )
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--model", default="mmoe")
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    ap.add_argument("--batch-size", type=int, help="default: the params' train.batch_size")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--out", type=Path, default=Path("reports/benchmarks/train_throughput.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    params = with_overrides(load_params(args.params), args.model, args.batch_size, device)
    frame = read_training_set(args.training_set)
    frame = frame[frame["split"] == "train"].reset_index(drop=True)
    fit_seconds(frame.head(max(params.train.batch_size * 4, 2048)), params, 1)  # warm-up
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    rates = []
    for _ in range(args.repeats):
        torch.manual_seed(0)
        rates.append(len(frame) * args.epochs / fit_seconds(frame, params, args.epochs))
        log.info("%s on %s: %.0f samples/s", args.model, device, rates[-1])
    result = {
        "training_set": str(args.training_set),
        "model": args.model,
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "threads": args.threads,
        "rows_per_epoch": len(frame),
        "epochs": args.epochs,
        "batch_size": params.train.batch_size,
        "samples_per_s": rates,
        "median_samples_per_s": statistics.median(rates),
        "peak_host_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2,
    }
    if device == "cuda":
        result["peak_gpu_allocated_gib"] = torch.cuda.max_memory_allocated() / 1024**3
        result["peak_gpu_reserved_gib"] = torch.cuda.max_memory_reserved() / 1024**3
    write_json(args.out, result)
    log.info("median %.0f samples/s", result["median_samples_per_s"])


if __name__ == "__main__":
    exit_on_error(main)
