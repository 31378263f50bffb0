"""The Kubeflow pipeline: the committed YAML is current, and a local run takes the right branch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from kfp import local
from kfp.dsl import Artifact

from components.gate import gate
from components.promote import report_refusal
from components.settings import DEFAULT_IMAGE, IMAGE
from pipelines.training_pipeline import COMPILED, compile_pipeline, training_pipeline
from shopguide.config import Params, load_params
from shopguide.io import read_json
from shopguide.registry import champion, versions
from tests.conftest import copy_feature_repo, write_params

# The local runner warns that the image names no Python (its tasks run in this venv instead)
# and that display names do nothing locally; both are expected here.
pytestmark = [
    pytest.mark.filterwarnings("ignore:You may be attemping:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:Task .* settings \\['display_name'\\]:UserWarning"),
]


def test_compiled_pipeline_is_current(tmp_path: Path) -> None:
    if IMAGE != DEFAULT_IMAGE:
        pytest.skip("SHOPGUIDE_IMAGE is set; the committed YAML uses the default image")
    fresh = compile_pipeline(tmp_path / "training_pipeline.yaml").read_text()
    assert fresh == COMPILED.read_text(), (
        f"{COMPILED} is stale; regenerate it with `python -m pipelines.training_pipeline`"
    )


def _artifact(path: Path) -> Artifact:
    """An artifact at `path`, for calling a component's function directly."""
    artifact = Artifact()
    artifact.path = str(path)
    return artifact


@pytest.mark.parametrize(("auc", "outcome"), [(0.7, "passed"), (0.5, "refused")])
def test_gate_returns_the_branch_to_take(tmp_path: Path, auc: float, outcome: str) -> None:
    params = Params()
    evaluation = tmp_path / "evaluate.json"
    evaluation.write_text(json.dumps({"overall": {t: {"auc": auc} for t in params.protocol.tasks}}))
    decision = tmp_path / "decision.json"
    result = gate.python_func(
        evaluation=_artifact(evaluation),
        training_set=_artifact(tmp_path / "unused.parquet"),  # read only to score a champion
        registry=str(tmp_path / "registry"),
        params_json=params.model_dump_json(),
        decision=_artifact(decision),
    )
    assert result == outcome
    assert read_json(decision)["passed"] is (outcome == "passed")


def test_report_refusal_records_failed_checks(tmp_path: Path) -> None:
    decision = tmp_path / "decision.json"
    decision.write_text(
        json.dumps(
            {
                "passed": False,
                "champion": "v0001",
                "reasons": ["auc_floor cart: AUC 0.6 < 0.9900", "auc_floor buy: AUC 0.7 >= 0.5"],
                "checks": [{"passed": False}, {"passed": True}],
            }
        )
    )
    out = tmp_path / "refusal.json"
    outcome = report_refusal.python_func(decision=_artifact(decision), refusal=_artifact(out))
    assert outcome == "refused: auc_floor cart: AUC 0.6 < 0.9900"
    assert read_json(out) == {
        "promoted": False,
        "version": None,
        "champion": "v0001",
        "reasons": ["auc_floor cart: AUC 0.6 < 0.9900"],
    }


def _run(root: Path, params: Params, sample: Path, feature_repo: Path, registry: Path):
    """Run the whole pipeline under the local subprocess runner; return its outcome and run dir.

    Each run gets its own pipeline root, so the run's one directory holds one subdirectory per
    task that ran (named after its component).
    """
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root))
    task = training_pipeline(
        raw_path=str(sample),
        feature_repo=str(feature_repo),
        registry=str(registry),
        params_json=params.model_dump_json(),
    )
    (run_dir,) = root.iterdir()
    return task.output, run_dir


@pytest.mark.slow
def test_failed_validation_stops_the_run(
    sample: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    feature_repo = copy_feature_repo(tmp_path / "feature_repo")
    params = load_params(write_params(tmp_path, sample, validation={"min_events": 10**9}))
    root = tmp_path / "kfp_root"
    with pytest.raises(RuntimeError, match=r"Inner task failed: .*validate"):
        _run(root, params, sample, feature_repo, tmp_path / "registry")
    (run_dir,) = root.iterdir()
    assert sorted(p.name for p in run_dir.iterdir()) == ["ingest", "validate"]
    assert not (feature_repo / "data").exists()


@pytest.mark.slow
def test_local_run_promotes_then_refuses(
    sample: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Tasks inherit the working directory; keep anything they might drop there out of the repo.
    monkeypatch.chdir(tmp_path)
    feature_repo = copy_feature_repo(tmp_path / "feature_repo")
    registry = tmp_path / "registry"
    params = load_params(write_params(tmp_path, sample))
    kfp_root = tmp_path / "kfp_root"

    outcome, run_dir = _run(kfp_root / "pass", params, sample, feature_repo, registry)
    first = champion(registry)
    assert first is not None
    assert outcome == f"promoted {first.name}"
    record = read_json(run_dir / "promote" / "promotion")
    assert record["promoted"] is True
    assert record["version"] == first.name
    assert (run_dir / "promote" / "inference_service").is_file()
    assert not (run_dir / "report-refusal").exists()

    strict = params.model_copy(
        update={
            "gate": params.gate.model_copy(
                update={"auc_floor": dict.fromkeys(params.protocol.tasks, 0.99)}
            )
        }
    )
    outcome, run_dir = _run(kfp_root / "refuse", strict, sample, feature_repo, registry)
    assert outcome.startswith("refused: auc_floor")
    refusal = read_json(run_dir / "report-refusal" / "refusal")
    assert refusal["promoted"] is False
    assert refusal["champion"] == first.name
    assert refusal["reasons"]
    assert not (run_dir / "promote").exists()
    assert champion(registry) == first
    assert [v.name for v in versions(registry)] == [first.name]
