"""`dvc repro` runs the whole pipeline from a clean checkout; a second run does nothing."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from shopguide.config import load_params
from shopguide.io import read_json
from shopguide.registry import champion
from shopguide.serving.process import running_server
from tests.conftest import NO_MODEL_FLOORS, ROOT


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
def test_dvc_repro_runs_everything_then_nothing(half_sample: Path, tmp_path: Path) -> None:
    """On half the sample with no model floors (the stages' order, outputs and caching are
    tested; the gate's rules are test_gate's), every stage runs and promotes."""
    repo = _checkout(tmp_path / "repo")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["data"]["raw_path"] = str(half_sample)
    params["gate"] |= NO_MODEL_FLOORS
    params["train"]["max_epochs"] = 2
    params["finetune"]["max_epochs"] = 1
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
    olist: Path, sample: Path, tmp_path: Path
) -> None:
    """`dvc repro datasets/dvc.yaml` as shipped (olist_review and taobao, their tables where
    the tests find them): trained, gated, promoted and served features; then nothing to do;
    the taobao champion answers a request for (user, item, category, moment) rows."""
    repo = _checkout(tmp_path / "repo")
    pipeline = yaml.safe_load((repo / "datasets/pipeline.yaml").read_text())
    assert set(pipeline["datasets"]) == {"olist_review", "taobao"}
    pipeline["datasets"]["olist_review"]["root"] = str(olist)
    pipeline["datasets"]["taobao"]["root"] = str(sample.parent)
    (repo / "datasets/pipeline.yaml").write_text(yaml.safe_dump(pipeline))
    schema = yaml.safe_load((repo / "datasets/taobao.yaml").read_text())
    schema["tables"]["events"]["path"] = sample.name
    (repo / "datasets/taobao.yaml").write_text(yaml.safe_dump(schema, sort_keys=False))
    for name in ("olist_review", "taobao"):
        settings = repo / f"datasets/{name}.params.yaml"
        raw = yaml.safe_load(settings.read_text())
        raw["evaluation"] = {"bootstrap_samples": 50}
        # A loaded test machine must not refuse on the serving latency (conftest.write_params).
        # Fewer served requests: the check's mechanism, not its statistics, is tested here.
        infra = {"p99_latency_ms": 5000, "requests": 5, "candidates": 20}
        raw["gate"] |= {"bootstrap_samples": 50, "infra": infra}
        settings.write_text(yaml.safe_dump(raw))
    _commit(repo)

    first = _run(["dvc", "repro", "datasets/dvc.yaml"], repo)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    for name in ("olist_review", "taobao"):
        for stage in ("train", "gate", "promote", "features"):
            assert f"Running stage 'datasets/dvc.yaml:{stage}@{name}'" in first.stdout
        out = repo / "artifacts/datasets" / name
        record = read_json(out / "promotion.json")
        registry = repo / "registry/datasets" / name
        assert record["promoted"] and champion(registry).name == record["version"] == "v0001"
        decision = read_json(out / "gate_decision.json")
        assert decision["passed"]
        # Served from the repo the features stage wrote, as offline.
        assert {"serving_parity", "serving_p99_latency"} <= {c["rule"] for c in decision["checks"]}
        assert read_json(out / "feature_repo/online.json")["dataset"] == name
    metrics = read_json(repo / "metrics/datasets/olist_review.json")
    assert metrics["test"]["bad_review"]["auc"] > 0.85
    taobao = read_json(repo / "metrics/datasets/taobao.json")["test"]
    assert taobao["buy"]["rows"] == 13_744 and taobao["buy"]["auc"] > 0.55
    assert {"gauc", "gauc_interval"} <= set(taobao["cart"])

    second = _run(["dvc", "repro", "datasets/dvc.yaml"], repo)
    assert second.returncode == 0
    assert "Running stage" not in second.stdout

    request = {
        "events.user_id": ["1", "100", "1"],
        "events.item_id": ["2268318", "2576651", "999"],
        "events.category_id": ["2520377", "149192", "1"],
        "events.timestamp": [1512316800.0, 1512316800.0, 1512320000.0],
    }
    inputs = [
        {"name": k, "shape": [3], "datatype": "FP64" if k.endswith("timestamp") else "BYTES"}
        | {"data": v}
        for k, v in request.items()
    ]
    params = load_params(repo / "datasets/taobao.params.yaml")
    out = repo / "artifacts/datasets/taobao"
    with (
        running_server(
            params, out / "feature_repo", registry=repo / "registry/datasets/taobao", declared=True
        ) as (url, _, _),
        httpx.Client(base_url=url, timeout=30) as client,
    ):
        reply = client.post("/v2/models/taobao/infer", json={"inputs": inputs})
        assert reply.status_code == 200, reply.text
        outputs = {o["name"]: o["data"] for o in reply.json()["outputs"]}
        assert set(outputs) == {"cart", "fav", "buy"}
        assert all(0.0 < p < 1.0 for scores in outputs.values() for p in scores)
