"""The images install from lock files (images/lock.sh): exact versions with sha256 hashes that
satisfy pyproject.toml; the predictor's lock holds only what serving needs, and a model is
served here with every other locked package made unimportable; the GPU image brings CUDA once,
through torch's wheels. The opt-in build itself is tests/test_image.py."""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import httpx
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from shopguide.config import Params
from shopguide.dataset.examples import joined_rows
from shopguide.dataset.online import request_columns
from shopguide.dataset.schema import load_schema
from shopguide.dataset.steps import features_step, train_step
from shopguide.serving.declared import v2_inputs
from shopguide.serving.process import running_server
from tests.conftest import PipelineRun
from tests.test_dataset_model import shop_schema

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "images"
LOCKS = {
    "pipeline": IMAGES / "requirements.lock",
    "predictor": IMAGES / "requirements-predictor.lock",
    "cuda": IMAGES / "requirements-cuda.lock",
}
PIPELINE_ONLY = {"kfp", "kfp-kubernetes", "great-expectations", "dvc", "matplotlib"}
PIN = re.compile(r"^([A-Za-z0-9._-]+)==(\S+)")


def pins(lock: Path) -> dict[str, str]:
    """name -> version of every `name==version` entry, each checked to carry a sha256 hash."""
    found, hashed = {}, set()
    name = None
    for line in lock.read_text().splitlines():
        if match := PIN.match(line):
            name = canonicalize_name(match[1])
            found[name] = match[2]
        elif name and line.strip().startswith("--hash=sha256:"):
            hashed.add(name)
    assert found and set(found) == hashed, set(found) - hashed
    return found


def project_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [Requirement(r) for r in project["dependencies"]]


def check_satisfies(locked: dict[str, str], requirements: list[Requirement]) -> None:
    for req in requirements:
        name = canonicalize_name(req.name)
        assert name in locked, f"{req.name} is not in the lock"
        assert req.specifier.contains(locked[name], prereleases=True), (req, locked[name])


@pytest.mark.parametrize("image", ["pipeline", "cuda"])
def test_full_locks_pin_every_dependency_within_pyproject(image: str) -> None:
    locked = pins(LOCKS[image])
    check_satisfies(locked, project_requirements())
    assert "redis" in locked  # feast[redis]: the production online store
    assert "shopguide" not in locked


def test_predictor_lock_is_the_serving_subset() -> None:
    wanted = [Requirement(line) for line in _lines(IMAGES / "predictor.in")]
    by_name = {canonicalize_name(r.name): r for r in project_requirements()}
    for req in wanted:  # the same specifiers as pyproject.toml
        assert str(by_name[canonicalize_name(req.name)]) == str(req)
    assert {canonicalize_name(r.name) for r in wanted} == set(by_name) - PIPELINE_ONLY
    locked = pins(LOCKS["predictor"])
    check_satisfies(locked, wanted)
    assert not PIPELINE_ONLY & set(locked)
    assert len(locked) < len(pins(LOCKS["pipeline"])) - 50


def test_cpu_images_lock_cpu_torch_and_the_gpu_image_cuda_torch_without_a_cuda_base() -> None:
    for image in ("pipeline", "predictor"):
        locked = pins(LOCKS[image])
        assert locked["torch"].endswith("+cpu")
        assert not [n for n in locked if n.startswith("nvidia-")]
    cuda = pins(LOCKS["cuda"])
    assert "+" not in cuda["torch"]
    assert {"nvidia-cuda-runtime", "nvidia-cublas"} <= set(cuda)
    assert any(n.startswith("nvidia-nccl") for n in cuda) and any(
        n.startswith("nvidia-cudnn") for n in cuda
    )
    containerfile = (IMAGES / "Containerfile.cuda").read_text()
    (base,) = re.findall(r"^ARG BASE=(\S+)", containerfile, re.M)
    assert "nvidia/cuda" not in base and "cuda" not in base


def test_containerfiles_install_from_their_locks_with_hashes() -> None:
    stages = _stages(IMAGES / "Containerfile")
    assert set(stages) == {"python", "pipeline", "predictor"}
    for stage, lock in (
        ("pipeline", "requirements.lock"),
        ("predictor", "requirements-predictor.lock"),
    ):
        body = stages[stage]
        assert f"COPY images/{lock} " in body
        assert "--require-hashes --no-deps" in body
        assert "pip install --no-deps --no-build-isolation ." in body
    assert stages["predictor"].startswith("FROM python AS predictor")  # not FROM pipeline
    cuda = (IMAGES / "Containerfile.cuda").read_text()
    assert "COPY images/requirements-cuda.lock " in cuda and "--require-hashes --no-deps" in cuda
    # Nothing is resolved at build time: no install names a package or a range.
    for text in [*stages.values(), cuda]:
        for command in re.findall(r"pip install ([^\n]*(?:\\\n[^\n]*)*)", text):
            assert "==" not in command and ">=" not in command, command


def _lines(path: Path) -> list[str]:
    return [s for line in path.read_text().splitlines() if (s := line.split("#")[0].strip())]


def _stages(containerfile: Path) -> dict[str, str]:
    stages, name = {}, None
    for line in containerfile.read_text().splitlines():
        if match := re.match(r"FROM \S+ AS (\S+)", line):
            name = match[1]
            stages[name] = ""
        if name:
            stages[name] += line + "\n"
    return stages


BLOCKER = """
import importlib.abc, os, sys

class _Blocked(importlib.abc.MetaPathFinder):
    names = set(os.environ["SHOPGUIDE_BLOCKED_MODULES"].split(","))

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.names:
            raise ModuleNotFoundError(f"{name} is not in the predictor image", name=name)
        return None

sys.meta_path.insert(0, _Blocked())
"""


def predictor_only_env(tmp_path: Path) -> dict[str, str]:
    """The environment in which every module of a distribution the pipeline image has and the
    predictor image lacks is unimportable (a sitecustomize in `tmp_path`)."""
    missing = set(pins(LOCKS["pipeline"])) - set(pins(LOCKS["predictor"]))
    modules = {
        module
        for module, dists in importlib.metadata.packages_distributions().items()
        if any(canonicalize_name(d) in missing for d in dists)
        and not any(canonicalize_name(d) in pins(LOCKS["predictor"]) for d in dists)
    }
    assert {"kfp", "dvc", "great_expectations", "matplotlib"} <= modules
    assert "sklearn" not in modules  # a declared dataset's text n-grams
    (tmp_path / "sitecustomize.py").write_text(BLOCKER)
    return {"PYTHONPATH": str(tmp_path), "SHOPGUIDE_BLOCKED_MODULES": ",".join(sorted(modules))}


def test_the_predictor_serves_with_only_its_locked_packages(
    pipeline_run: PipelineRun, tmp_path: Path
) -> None:
    """`shopguide serve` starts and ranks with only the predictor image's packages."""
    env = predictor_only_env(tmp_path)
    frame_user = 1000664
    with running_server(
        pipeline_run.params,
        pipeline_run.feature_repo,
        model_dir=pipeline_run.candidate,
        workdir=tmp_path,
        extra_env=env,
    ) as (url, _, _):
        response = httpx.post(
            f"{url}/v1/models/shopguide:predict",
            json={"instances": [{"user_id": frame_user, "item_ids": [3964153, 1668747]}]},
            timeout=30,
        )
        assert response.status_code == 200, response.text
        (prediction,) = response.json()["predictions"]
        assert sorted(prediction["ranked_item_ids"]) == [1668747, 3964153]
    # The blocker is active in such a process: importing a blocked module there fails.
    probe = subprocess.run(
        [sys.executable, "-c", "import kfp"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert probe.returncode != 0 and "not in the predictor image" in probe.stderr


def test_a_declared_dataset_serves_with_only_its_locked_packages(tmp_path: Path) -> None:
    """`shopguide dataset serve` of a model with a text field (the shops dataset's note)
    starts and scores with only the predictor image's packages."""
    schema_path = shop_schema(tmp_path / "shops")
    params = Params.model_validate({"train": {"batch_size": 64, "max_epochs": 1}})
    model_dir, repo = tmp_path / "model", tmp_path / "feature_repo"
    train_step(
        schema_path,
        params,
        model_dir,
        tmp_path / "m.json",
        tmp_path / "h.csv",
        tmp_path / "reports",
        tmp_path / "examples.parquet",
    )
    features_step(schema_path, params, repo, tmp_path / "reports")
    schema = load_schema(schema_path)
    assert schema.column("orders.note").type == "text"
    rows = joined_rows(schema)[request_columns(schema)].iloc[:2]
    env = predictor_only_env(tmp_path)
    with running_server(
        params, repo, model_dir=model_dir, workdir=tmp_path, extra_env=env, declared=True
    ) as (url, _, _):
        reply = httpx.post(
            f"{url}/v2/models/shops/infer", json={"inputs": v2_inputs(schema, rows)}, timeout=30
        )
    assert reply.status_code == 200, reply.text
    assert {o["name"] for o in reply.json()["outputs"]} == set(schema.tasks)
