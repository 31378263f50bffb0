"""The training engine: a run killed mid-way (after an epoch, or within one) resumes from its
last checkpoint and ends with exactly the metrics of an uninterrupted run; the streamed
training set trains as the one held in memory; `torchrun` trains data-parallel on 2 CPU
processes (gloo), each reading its own share of the stream."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from shopguide.config import load_params
from shopguide.errors import ShopguideError
from shopguide.io import read_json
from shopguide.model.fit import CHECKPOINT, fit, resolve_device, settings_from_params
from shopguide.model.store import load_model
from shopguide.train import train_step, training_data
from tests.conftest import PipelineRun
from tests.test_model_zoo import SMALL_MODEL

BIN = Path(sys.executable).parent


def small_params_file(run: PipelineRun, workdir: Path, **train: object) -> Path:
    raw = yaml.safe_load(run.params_path.read_text())
    raw["model"] |= {k: list(v) if isinstance(v, tuple) else v for k, v in SMALL_MODEL.items()}
    raw["train"] |= {"max_epochs": 5, "patience": 5, "batch_size": 512, **train}
    path = workdir / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def shopguide_train(run: PipelineRun, out: Path, params: Path, *extra: str) -> list[str]:
    return [
        *extra,
        "train",
        "--training-set",
        str(run.training_set),
        "--ranking-set",
        str(run.ranking_set),
        "--model-dir",
        str(out / "model"),
        "--metrics",
        str(out / "train.json"),
        "--history",
        str(out / "history.csv"),
        "--params",
        str(params),
    ]


def test_killed_run_resumes_to_the_same_result(pipeline_run: PipelineRun, tmp_path: Path) -> None:
    params_path = small_params_file(pipeline_run, tmp_path)
    params = load_params(params_path)
    whole = train_step(
        pipeline_run.training_set,
        tmp_path / "whole/model",
        tmp_path / "whole/train.json",
        tmp_path / "whole/history.csv",
        params,
        ranking_set=pipeline_run.ranking_set,
    )

    checkpoints = tmp_path / "checkpoints"
    cmd = shopguide_train(pipeline_run, tmp_path / "killed", params_path, str(BIN / "shopguide"))
    proc = subprocess.Popen([*cmd, "--checkpoint-dir", str(checkpoints)])
    deadline = time.monotonic() + 300
    while not (checkpoints / CHECKPOINT).exists():
        assert proc.poll() is None, "training ended before writing a checkpoint"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = torch.load(checkpoints / CHECKPOINT, weights_only=True)["epoch"]
    assert killed_at < params.train.max_epochs - 1, "the run finished before it was killed"
    assert not (tmp_path / "killed/model").exists()

    resumed = train_step(
        pipeline_run.training_set,
        tmp_path / "resumed/model",
        tmp_path / "resumed/train.json",
        tmp_path / "resumed/history.csv",
        params,
        checkpoint_dir=checkpoints,
        ranking_set=pipeline_run.ranking_set,
    )
    assert resumed["best_epoch"] == whole["best_epoch"]
    for task, m in whole["validation"].items():
        assert resumed["validation"][task]["auc"] == pytest.approx(m["auc"], abs=1e-9)
        assert resumed["validation"][task]["logloss"] == pytest.approx(m["logloss"], abs=1e-9)
    a, b = load_model(tmp_path / "whole/model"), load_model(tmp_path / "resumed/model")
    for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y)


def test_warmup_epochs_do_not_count_toward_patience(
    pipeline_run: PipelineRun, tmp_path: Path
) -> None:
    """Staged training with patience 1: the kept model is a joint-training epoch's, and at
    least one joint epoch runs however the warm-up went."""
    params = load_params(
        small_params_file(
            pipeline_run, tmp_path, warmup_epochs=2, warmup_task="buy", patience=1, max_epochs=4
        )
    )
    metrics = train_step(
        pipeline_run.training_set,
        tmp_path / "model",
        tmp_path / "train.json",
        tmp_path / "history.csv",
        params,
    )
    history = pd.read_csv(tmp_path / "history.csv")
    assert metrics["best_epoch"] >= 2
    assert len(history) >= 3


def test_torchrun_trains_data_parallel_on_two_cpu_processes(
    pipeline_run: PipelineRun, tmp_path: Path
) -> None:
    # `device: cpu` keeps this on gloo on a GPU machine too (NCCL only trains on GPUs)
    params_path = small_params_file(pipeline_run, tmp_path, max_epochs=2, device="cpu")
    cmd = shopguide_train(
        pipeline_run,
        tmp_path,
        params_path,
        str(BIN / "torchrun"),
        "--standalone",
        "--nproc_per_node=2",
        str(BIN / "shopguide"),
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = read_json(tmp_path / "train.json")
    assert metrics["processes"] == 2
    aucs = [m["auc"] for m in metrics["validation"].values()]
    assert sum(aucs) / len(aucs) > 0.55, metrics["validation"]
    tasks = tuple(load_params(params_path).protocol.tasks)
    assert load_model(tmp_path / "model").config.tasks == tasks
    assert set(metrics["validation"]) >= set(tasks)


def test_auto_device_is_the_gpu_only_where_one_is_visible() -> None:
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == "cpu"
    if torch.cuda.is_available():
        assert resolve_device("cuda") == "cuda"
    else:  # asked for explicitly where there is none: a clear error, not a torch assertion
        with pytest.raises(ShopguideError, match=r"train\.device is cuda but torch sees no GPU"):
            resolve_device("cuda")


def test_throughput_benchmark_times_every_training_row(
    pipeline_run: PipelineRun, tmp_path: Path
) -> None:
    """benchmarks/train_throughput.py end to end on the CPU: the rate covers the split's train
    rows, and GPU memory is reported only for a GPU."""
    out = tmp_path / "throughput.json"
    command = [
        sys.executable,
        "benchmarks/train_throughput.py",
        "--training-set",
        str(pipeline_run.training_set),
        "--params",
        str(small_params_file(pipeline_run, tmp_path)),
        "--device",
        "cpu",
        "--epochs",
        "1",
        "--repeats",
        "1",
        "--threads",
        "1",
        "--out",
        str(out),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = read_json(out)
    train_rows = int(
        pd.read_parquet(pipeline_run.training_set, columns=["split"])["split"].eq("train").sum()
    )
    assert result["rows_per_epoch"] == train_rows
    assert result["device"] == "cpu" and "peak_gpu_allocated_gib" not in result
    assert result["median_samples_per_s"] > 1000


def test_a_truncated_checkpoint_is_named(pipeline_run: PipelineRun, tmp_path: Path) -> None:
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    torch.save({"fingerprint": "x", "model": {"w": torch.zeros(10_000)}}, checkpoints / CHECKPOINT)
    whole = (checkpoints / CHECKPOINT).read_bytes()
    (checkpoints / CHECKPOINT).write_bytes(whole[: len(whole) // 2])  # a copy cut short
    params = load_params(small_params_file(pipeline_run, tmp_path, max_epochs=1))
    with pytest.raises(ShopguideError, match=f"{checkpoints / CHECKPOINT}: not a readable"):
        train_step(
            pipeline_run.training_set,
            tmp_path / "model",
            tmp_path / "train.json",
            tmp_path / "history.csv",
            params,
            checkpoint_dir=checkpoints,
        )
    assert not (tmp_path / "model").exists()


# Runs `shopguide` and kills it (SIGKILL, no cleanup) just before its second rename of one of
# the paths in KILL_AT: between two of the train step's outputs going into place.
KILL_AT_SECOND_RENAME = """
import os, signal, sys
watched = set(os.environ["KILL_AT"].split(os.pathsep))
renames = 0

def hook(event, args):
    global renames
    if event == "os.rename" and os.fspath(args[1]) in watched:
        renames += 1
        if renames == 2:
            os.kill(os.getpid(), signal.SIGKILL)

sys.addaudithook(hook)
from shopguide.cli import main
sys.argv[0] = "shopguide"
main()
"""


def test_a_kill_between_outputs_leaves_no_model_without_history(
    pipeline_run: PipelineRun, tmp_path: Path
) -> None:
    """The model goes into place after its metrics and history; the hidden temporary files a
    killed run leaves are removed by the next run."""
    out = tmp_path / "out"
    params_path = small_params_file(pipeline_run, tmp_path, max_epochs=1)
    targets = [out / "model", out / "train.json", out / "history.csv"]
    env = {**os.environ, "KILL_AT": os.pathsep.join(map(str, targets))}
    cmd = shopguide_train(pipeline_run, out, params_path, sys.executable, "-c")
    killed = subprocess.run([cmd[0], cmd[1], KILL_AT_SECOND_RENAME, *cmd[2:]], env=env, timeout=300)
    assert killed.returncode == -signal.SIGKILL
    assert not (out / "model").exists()
    assert any(p.name.startswith(".") for p in out.iterdir())  # what the kill left behind
    train_step(pipeline_run.training_set, *targets, load_params(params_path))
    assert sorted(p.name for p in out.iterdir()) == ["history.csv", "model", "train.json"]


def _train(run: PipelineRun, out: Path, params_path: Path) -> dict:
    params = load_params(params_path)
    return train_step(
        run.training_set,
        out / "model",
        out / "train.json",
        out / "history.csv",
        params,
        ranking_set=run.ranking_set,
    )


def test_streamed_training_equals_training_in_memory(
    pipeline_run: PipelineRun, tmp_path: Path
) -> None:
    """The stream (`train.loader: stream`, the default) trains on exactly the in-memory rows:
    where they fit in its buffer, in the same order to the same training losses; through a
    buffer of a tenth of them, on every row once an epoch, within a documented tolerance
    (0.03 mean AUC)."""
    runs = {}
    for name, train in (
        ("memory", {"loader": "memory"}),
        ("whole", {"loader": "stream"}),
        ("streamed", {"loader": "stream", "shuffle_buffer_rows": 20_000}),
    ):
        workdir = tmp_path / name
        workdir.mkdir()
        params_path = small_params_file(pipeline_run, workdir, max_epochs=1, **train)
        runs[name] = _train(pipeline_run, workdir, params_path)
    memory, whole, streamed = runs["memory"], runs["whole"], runs["streamed"]
    assert pq.ParquetFile(pipeline_run.training_set).num_row_groups > 1
    assert whole["train_rows"] == memory["train_rows"] == streamed["train_rows"]
    assert whole["validation_rows"] == memory["validation_rows"]
    histories = {n: pd.read_csv(tmp_path / n / "history.csv") for n in runs}
    # the same steps on the same batches: the same training loss, epoch by epoch
    assert histories["whole"]["train_loss"].tolist() == pytest.approx(
        histories["memory"]["train_loss"].tolist(), rel=1e-9
    )
    # validation scored in other batches: float noise moves near-ties of the rarer tasks
    for task, m in memory["validation"].items():
        for metric in ("auc", "moment_auc"):
            assert whole["validation"][task][metric] == pytest.approx(m[metric], abs=1e-3)
    assert (histories["streamed"]["samples"] == memory["train_rows"]).all()

    def mean_auc(metrics: dict) -> float:
        return sum(m["auc"] for m in metrics["validation"].values()) / len(metrics["validation"])

    assert mean_auc(streamed) == pytest.approx(mean_auc(memory), abs=0.03)


class _Interrupted(Exception):
    pass


def test_a_run_stopped_mid_epoch_resumes_to_the_same_result(
    pipeline_run: PipelineRun, tmp_path: Path
) -> None:
    """With `train.checkpoint_every_steps`, a streamed run stopped within an epoch resumes
    from its last step checkpoint and ends as the run that was never stopped."""
    params = load_params(
        small_params_file(
            pipeline_run,
            tmp_path,
            max_epochs=1,
            batch_size=256,
            shuffle_buffer_rows=30_000,
            checkpoint_every_steps=40,
        )
    )

    def run(checkpoints: Path | None, stop_at: int | None) -> tuple:
        steps = itertools.count(1)

        def stop(*_: object) -> torch.Tensor:
            if next(steps) == stop_at:
                raise _Interrupted
            return torch.zeros(())

        model, train, valid = training_data(
            pipeline_run.training_set, pipeline_run.ranking_set, params
        )
        settings = settings_from_params(params.train, model.config.head_names())
        result = fit(model, train, valid, settings, checkpoint_dir=checkpoints, extra_loss=stop)
        return model, result

    whole_model, whole = run(None, None)
    checkpoints = tmp_path / "checkpoints"
    with pytest.raises(_Interrupted):
        run(checkpoints, stop_at=130)
    saved = torch.load(checkpoints / CHECKPOINT, weights_only=True)
    assert saved["epoch"] == 0 and json.loads(saved["state"])["step"] == 120
    resumed_model, resumed = run(checkpoints, None)
    assert resumed.resumed_from == 0

    def steps_taken(history: list[dict]) -> list[dict]:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in history]

    assert steps_taken(resumed.history) == steps_taken(whole.history)
    for x, y in zip(
        whole_model.state_dict().values(), resumed_model.state_dict().values(), strict=True
    ):
        assert torch.equal(x, y)
