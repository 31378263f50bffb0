"""Train on every GPU of the node a step runs on: the pipeline's train step with
`kubeflow.train_accelerator_limit` GPUs starts one `torchrun` process per visible GPU
(data-parallel, NCCL; shopguide.model.fit), on one node. It replaces the Training Operator
PyTorchJob, which trained outside the pipeline, from a file nothing wrote, into no registry.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import yaml

from shopguide.config import Params
from shopguide.errors import ShopguideError
from shopguide.io import read_json
from shopguide.model.fit import resolve_device
from shopguide.train import train_step

log = logging.getLogger(__name__)


def visible_gpus(params: Params) -> int:
    """How many processes to start: one per GPU torch sees when training on the GPU, else 1."""
    if resolve_device(params.train.device) != "cuda":
        return 1
    return max(torch.cuda.device_count(), 1)


def train_on_all_gpus(
    training_set: Path,
    model_dir: Path,
    metrics_path: Path,
    history_path: Path,
    params: Params,
    processes: int | None = None,
    ranking_set: Path | None = None,
) -> dict:
    """`train_step` in this process for one process (`processes`, default `visible_gpus`);
    for more, `torchrun --standalone` of `shopguide train` with these settings, one process
    each, whose rank 0 writes the model, metrics and history. Returns the metrics."""
    processes = visible_gpus(params) if processes is None else processes
    if processes <= 1:
        return train_step(
            training_set, model_dir, metrics_path, history_path, params, ranking_set=ranking_set
        )
    if ranking_set is None:  # as the in-process step: no ranking set, no training queries
        train = params.train.model_copy(update={"ranking_queries": False})
        params = params.model_copy(update={"train": train})
    with tempfile.TemporaryDirectory() as tmp:
        params_file = Path(tmp) / "params.yaml"
        params_file.write_text(yaml.safe_dump(params.model_dump(mode="json")))
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        command += [f"--nproc-per-node={processes}", "-m", "shopguide.cli", "train"]
        command += ["--training-set", str(training_set), "--model-dir", str(model_dir)]
        command += ["--metrics", str(metrics_path), "--history", str(history_path)]
        command += ["--params", str(params_file)]
        if ranking_set is not None:
            command += ["--ranking-set", str(ranking_set)]
        log.info("training on %d processes: %s", processes, " ".join(command))
        # Each process sizes its thread pool by the node's cores otherwise.
        threads = str(max((os.cpu_count() or 1) // processes, 1))
        env = {"OMP_NUM_THREADS": threads, **os.environ}
        done = subprocess.run(command, env=env, check=False)
    if done.returncode != 0:
        raise ShopguideError(
            f"torchrun of {processes} training processes failed (exit {done.returncode})"
        )
    return read_json(metrics_path)
