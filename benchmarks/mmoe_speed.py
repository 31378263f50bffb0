"""MMoE training throughput (samples/s) of shopguide's engine against torch-rechub 0.9.0 on the
same data (protocol taobao-mtl-v1 train exposures), the same model size and the same threads,
measured in one run. torch-rechub runs its own data path and `MTLTrainer.train_one_epoch`.

Both run under the OpenMP runtime's default (idle threads spin a while, then sleep), as
`shopguide train` does; `OMP_WAIT_POLICY=PASSIVE` in the environment (idle threads sleep at
once, kinder to a shared CPU) measures the other setting. The results record which.

    python benchmarks/mmoe_speed.py --training-set artifacts/data/training_set.parquet
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import time
from pathlib import Path

import torch
from torch_rechub.basic.features import DenseFeature, SparseFeature
from torch_rechub.models.multi_task import MMOE
from torch_rechub.trainers import MTLTrainer
from torch_rechub.utils.data import DataGenerator
from train_throughput import fit_seconds, with_overrides

from shopguide.config import load_params
from shopguide.errors import exit_on_error
from shopguide.io import write_json
from shopguide.model.tensors import read_training_set, to_tensors
from shopguide.train import build_model

log = logging.getLogger("benchmarks.mmoe_speed")


def rechub_epoch_seconds(data, params, epochs: int) -> float:
    """Seconds for `epochs` epochs of torch-rechub's MMOE of the same size on the same rows."""
    m = params.model
    buckets = {"user": m.user_buckets, "item": m.item_buckets, "category": m.category_buckets}
    ids = {"user": data.user, "item": data.item, "category": data.category}
    x = {k: ((ids[k] * 2654435761) % b).numpy() for k, b in buckets.items()}
    dense = torch.log1p(data.dense.clamp_min(0)).numpy()
    names = [f"d{i}" for i in range(dense.shape[1])]
    x |= {n: dense[:, i] for i, n in enumerate(names)}
    features = [SparseFeature(k, b, embed_dim=m.embedding_dim) for k, b in buckets.items()]
    features += [DenseFeature(n) for n in names]
    tower = {"dims": list(m.tower_hidden), "dropout": m.dropout}
    model = MMOE(
        features,
        ["classification"] * 3,
        m.num_experts,
        {"dims": list(m.expert_hidden), "dropout": m.dropout},
        [tower] * 3,
    )
    loader, _, _ = DataGenerator(x, data.labels.numpy()).generate_dataloader(
        x_val=x,
        y_val=data.labels.numpy(),
        x_test=x,
        y_test=data.labels.numpy(),
        batch_size=params.train.batch_size,
    )
    trainer = MTLTrainer(
        model,
        ["classification"] * 3,
        optimizer_params={
            "lr": params.train.learning_rate,
            "weight_decay": params.train.weight_decay,
        },
        n_epoch=epochs,
    )
    start = time.perf_counter()
    for _ in range(epochs):
        trainer.train_one_epoch(loader)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--training-set", type=Path, default=Path("artifacts/data/training_set.parquet")
    )
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, help="both engines' batch (default: params.yaml)")
    ap.add_argument("--out", type=Path, default=Path("reports/benchmarks/mmoe_speed.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    params = load_params(args.params)
    params = with_overrides(params, "mmoe", args.batch_size, params.train.device)
    frame = read_training_set(args.training_set)
    frame = frame[frame["split"] == "train"]
    data = to_tensors(
        frame,
        params.protocol.tasks,
        build_model(frame.head(10), params).config,
    )
    rows = len(frame) * args.epochs
    # The first optimizer built in a process imports torch._dynamo (seconds); not an epoch cost.
    torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))])
    ours, theirs = [], []
    for _ in range(args.repeats):
        torch.manual_seed(0)
        ours.append(rows / fit_seconds(frame, params, args.epochs))
        torch.manual_seed(0)
        theirs.append(rows / rechub_epoch_seconds(data, params, args.epochs))
        log.info("samples/s: shopguide %.0f, torch-rechub %.0f", ours[-1], theirs[-1])
    result = {
        "rows_per_epoch": len(frame),
        "epochs": args.epochs,
        "threads": args.threads,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
        "batch_size": params.train.batch_size,
        "shopguide_samples_per_s": ours,
        "torch_rechub_samples_per_s": theirs,
        "median_shopguide": statistics.median(ours),
        "median_torch_rechub": statistics.median(theirs),
        "speedup": statistics.median(ours) / statistics.median(theirs),
    }
    write_json(args.out, result)
    log.info(
        "median samples/s: %s",
        {k: round(v, 2) for k, v in result.items() if "median" in k or k == "speedup"},
    )


if __name__ == "__main__":
    exit_on_error(main)
