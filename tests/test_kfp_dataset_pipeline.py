"""A declared dataset's Kubeflow pipeline run whole under KFP's local subprocess runner, on the
shops dataset (README "Your own data"): train, the generated Feast repo, the gate serving the
candidate from it, promotion; then a run held to floors no model reaches takes the refusal
branch and leaves that champion in place."""

from __future__ import annotations

from pathlib import Path

import pytest
from kfp import local

from pipelines.dataset_pipeline import dataset_pipeline
from shopguide.config import Params
from shopguide.io import read_json
from shopguide.registry import champion, versions
from tests.test_dataset_model import shop_schema

pytestmark = [
    pytest.mark.filterwarnings("ignore:You may be attemping:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:Task .* settings \\[.*\\]:UserWarning"),
]


def _run(root: Path, schema: Path, work: Path, params: Params) -> tuple[str, Path]:
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root))
    task = dataset_pipeline(
        schema_path=str(schema),
        root="",
        feature_repo=str(work / "feature_repo"),
        registry=str(work / "registry"),
        params_json=params.model_dump_json(),
    )
    (run_dir,) = root.iterdir()
    return task.output, run_dir


@pytest.mark.slow
def test_the_dataset_pipeline_promotes_then_refuses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # tasks inherit it: anything they drop stays out of the repo
    schema = shop_schema(tmp_path / "shops")
    # As conftest.write_params: a loaded test machine must not refuse on the serving latency.
    params = Params.model_validate(
        {
            "train": {"batch_size": 64, "learning_rate": 0.01, "max_epochs": 3},
            "gate": {
                "bootstrap_samples": 50,
                "infra": {"p99_latency_ms": 5000, "requests": 5, "candidates": 20},
            },
        }
    )
    outcome, run_dir = _run(tmp_path / "kfp" / "pass", schema, tmp_path, params)
    first = champion(tmp_path / "registry")
    assert first is not None and outcome == f"promoted {first.name}"
    assert read_json(run_dir / "dataset-promote" / "promotion")["version"] == first.name
    decision = read_json(run_dir / "dataset-gate" / "decision")
    assert decision["passed"] and decision["dataset"] == "shops"
    served = {c["rule"]: c["passed"] for c in decision["checks"] if c["rule"].startswith("serv")}
    assert served == {"serving_parity": True, "serving_p99_latency": True}
    summary = (run_dir / "dataset-gate" / "summary").read_text()
    assert summary.startswith("## Gate passed (dataset shops, champion: none)")
    assert "serving_parity" in summary
    assert (tmp_path / "feature_repo" / "dataset.json").is_file()
    metrics = read_json(run_dir / "dataset-train" / "metrics")
    assert metrics["dataset"] == "shops" and metrics["test"]["good"]["auc"] > 0.7
    assert not (run_dir / "report-refusal").exists()

    strict = params.model_copy(
        update={
            "gate": params.gate.model_copy(
                update={
                    "declared_auc_floor": {"rated": 0.99},
                    # The serving check ran in the first run; this one tests the refusal branch.
                    "infra": params.gate.infra.model_copy(update={"enabled": False}),
                }
            ),
            "train": params.train.model_copy(update={"max_epochs": 1}),
        }
    )
    outcome, run_dir = _run(tmp_path / "kfp" / "strict", schema, tmp_path, strict)
    assert outcome.startswith("refused: ") and "rated: auc" in outcome
    refusal = read_json(run_dir / "report-refusal" / "refusal")
    assert refusal["promoted"] is False and refusal["champion"] == first.name
    assert not (run_dir / "dataset-promote").exists()
    assert [v.name for v in versions(tmp_path / "registry")] == [first.name]
