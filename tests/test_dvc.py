"""`dvc repro` runs the whole pipeline from a clean checkout; a second run does nothing."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from shopguide.io import read_json
from shopguide.registry import champion
from tests.conftest import ROOT


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=1200)


def _checkout(repo: Path) -> Path:
    """This working tree's files (tracked and untracked, not ignored) copied to `repo`."""
    files = _run(["git", "ls-files", "-co", "--exclude-standard"], ROOT).stdout.split()
    for name in files:
        if (ROOT / name).is_file():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, repo / name)
    return repo


def _commit(repo: Path) -> None:
    git = ["git", "-c", "user.name=ci", "-c", "user.email=ci@localhost"]
    assert _run(["git", "init", "-q"], repo).returncode == 0
    assert _run([*git, "add", "-A"], repo).returncode == 0
    assert _run([*git, "commit", "-qm", "snapshot"], repo).returncode == 0


@pytest.mark.slow
def test_dvc_repro_runs_everything_then_nothing(sample: Path, tmp_path: Path) -> None:
    repo = _checkout(tmp_path / "repo")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["data"]["raw_path"] = str(sample)
    params["train"]["max_epochs"] = 4
    params["finetune"]["max_epochs"] = 2
    params["sampling"] |= {"recent": 2, "popularity": 1, "uniform": 1}
    params["features"]["sequence_length"] = 8
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    _commit(repo)

    first = _run(["dvc", "repro"], repo)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    for stage in (
        "ingest",
        "validate_events",
        "features",
        "validate_training_set",
        "train",
        "finetune",
        "evaluate",
        "gate",
        "promote",
    ):
        assert f"Running stage '{stage}'" in first.stdout
    record = read_json(repo / "artifacts/gate/promotion.json")
    assert record["promoted"] and champion(repo / "registry").name == record["version"]
    assert (repo / "k8s/rendered/inferenceservice.yaml").is_file()
    assert (repo / "reports/evaluation.html").is_file()

    second = _run(["dvc", "repro"], repo)
    assert second.returncode == 0
    assert "Running stage" not in second.stdout
    assert "Data and pipelines are up to date" in second.stdout


@pytest.mark.slow
def test_dvc_repro_of_the_declared_datasets_promotes_and_fills_the_store(
    olist: Path, tmp_path: Path
) -> None:
    """`dvc repro datasets/dvc.yaml` as shipped (olist_review, its tables where the tests
    find Olist): trained, gated, promoted and served features; then nothing to do."""
    repo = _checkout(tmp_path / "repo")
    pipeline = yaml.safe_load((repo / "datasets/pipeline.yaml").read_text())
    for entry in pipeline["datasets"].values():
        entry["root"] = str(olist)
    (repo / "datasets/pipeline.yaml").write_text(yaml.safe_dump(pipeline))
    settings = repo / "datasets/olist_review.params.yaml"
    settings.write_text(settings.read_text() + "evaluation: {bootstrap_samples: 50}\n")
    _commit(repo)

    first = _run(["dvc", "repro", "datasets/dvc.yaml"], repo)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    for stage in ("train", "gate", "promote", "features"):
        assert f"Running stage 'datasets/dvc.yaml:{stage}@olist_review'" in first.stdout
    out = repo / "artifacts/datasets/olist_review"
    record = read_json(out / "promotion.json")
    registry = repo / "registry/datasets/olist_review"
    assert record["promoted"] and champion(registry).name == record["version"] == "v0001"
    assert read_json(out / "gate_decision.json")["passed"]
    assert read_json(out / "feature_repo/online.json")["dataset"] == "olist_review"
    metrics = read_json(repo / "metrics/datasets/olist_review.json")
    assert metrics["test"]["bad_review"]["auc"] > 0.85

    second = _run(["dvc", "repro", "datasets/dvc.yaml"], repo)
    assert second.returncode == 0
    assert "Running stage" not in second.stdout
