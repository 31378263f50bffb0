"""The pipeline's train step on several GPUs of one node: `train_on_all_gpus` starts one
`torchrun` process per GPU (here two CPU processes on gloo, `train.device: cpu`) with the step's
settings, and returns rank 0's metrics; one process trains in-process."""

from __future__ import annotations

from pathlib import Path

import pytest
from kfp.dsl import Metrics

from components.train import train
from shopguide.config import load_params
from shopguide.errors import ShopguideError
from shopguide.io import read_json
from shopguide.launch import train_on_all_gpus, visible_gpus
from shopguide.model.store import load_model
from shopguide.model.tensors import is_new_category, read_training_set
from tests.conftest import PipelineRun
from tests.test_kfp_pipeline import _artifact
from tests.test_training_engine import small_params_file


def test_two_processes_train_one_model_through_torchrun(
    pipeline_run: PipelineRun, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    params = load_params(small_params_file(pipeline_run, tmp_path, max_epochs=1, device="cpu"))
    assert visible_gpus(params) == 1  # no GPU for `device: cpu`: the step stays in-process
    metrics = train_on_all_gpus(
        pipeline_run.training_set,
        tmp_path / "model",
        tmp_path / "train.json",
        tmp_path / "history.csv",
        params,
        processes=2,
        ranking_set=pipeline_run.ranking_set,
    )
    assert metrics["processes"] == 2
    assert metrics == read_json(tmp_path / "train.json")
    assert load_model(tmp_path / "model").config.tasks == params.protocol.tasks
    assert (tmp_path / "history.csv").is_file()


def test_a_failed_process_fails_the_step(pipeline_run: PipelineRun, tmp_path: Path) -> None:
    params = load_params(small_params_file(pipeline_run, tmp_path, device="cpu"))
    with pytest.raises(ShopguideError, match="torchrun of 2 training processes failed"):
        train_on_all_gpus(
            tmp_path / "missing.parquet",
            tmp_path / "model",
            tmp_path / "train.json",
            tmp_path / "history.csv",
            params,
            processes=2,
        )
    assert not (tmp_path / "model").exists()


def test_the_train_component_logs_how_many_processes_trained(
    pipeline_run: PipelineRun, tmp_path: Path
) -> None:
    params = load_params(small_params_file(pipeline_run, tmp_path, max_epochs=1, device="cpu"))
    metrics = Metrics()
    metrics.path = str(tmp_path / "train.json")
    train.python_func(
        training_set=_artifact(pipeline_run.training_set),
        ranking_set=_artifact(pipeline_run.ranking_set),
        params_json=params.model_dump_json(),
        model=_artifact(tmp_path / "model"),
        metrics=metrics,
        history=_artifact(tmp_path / "history.csv"),
    )
    assert metrics.metadata["processes"] == 1
    recorded = read_json(tmp_path / "train.json")
    assert recorded["processes"] == 1
    # The ranking set reached the step: its train-split queries are trained on beside the
    # training set's old-category train rows (train.ranking_queries).
    assert params.train.ranking_queries
    examples = read_training_set(pipeline_run.training_set)
    old = examples[
        (examples["split"] == "train") & ~is_new_category(examples["category_id"], params.finetune)
    ]
    assert recorded["train_rows"] + recorded["validation_rows"] > len(old)
