"""Shared fixtures: the real Taobao sample and one real pipeline run reused by many tests."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from shopguide.config import Params, load_params
from shopguide.features import fresh_repo

# Tests run servers, clients and pipeline tasks side by side on few cores, where OpenMP threads
# that spin while waiting cost several times their work. Set before any test imports torch;
# subprocesses inherit it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# One thread per process: the two xdist workers fill the two cores, and the pipeline tests they
# run side by side (training, KFP steps, servers) would otherwise each start a thread per core.
os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = Path(
    os.environ.get(
        "SHOPGUIDE_TAOBAO_SAMPLE", ROOT.parent / "shared/data/taobao/UserBehavior_sample.csv"
    )
)
FIXTURES = Path(os.environ.get("SHOPGUIDE_FIXTURES", ROOT.parent / "shared/data/fixtures"))
OLIST = Path(os.environ.get("SHOPGUIDE_OLIST", ROOT.parent / "shared/data/olist"))
# The files whose tests take longest (measured in CI), slowest first, after the files that
# share `pipeline_run` (one unit, the longest). xdist hands units to its workers in collection
# order; by default it orders them by their count of tests, which puts these few-test,
# whole-pipeline files last, where one worker runs them while the other idles.
SLOWEST_FIRST = (
    "test_dvc.py",
    "test_kfp_local_run.py",
    "test_dataset_serving.py",
    "test_rees46_pipeline.py",
    "test_kfp_dataset_pipeline.py",
    "test_synth.py",
    "test_registry.py",
    "test_dataset_model.py",
)
SHARED_RUN = "pipeline_run"
# The gate's settings for the whole-pipeline orchestration tests (KFP, DVC) on half the sample:
# no model floors, so the run takes the promotion branch whatever two epochs learn (the gate's
# rules are test_gate's); the serving check still runs.
NO_MODEL_FLOORS = {
    "auc_floor": dict.fromkeys(("click", "cart", "fav", "buy"), 0.0),
    "ranking_auc_floor": None,
}


@functools.cache
def uses_shared_run(path: Path) -> bool:
    """Whether a test file uses the shared `pipeline_run` (read off its source, so the xdist
    controller, which collects no tests, can tell too)."""
    return SHARED_RUN in path.read_text()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The files that share `pipeline_run` first (one unit of work, the longest: see
    `pytest_xdist_make_scheduler`), then the slowest files (`SLOWEST_FIRST`), each file's
    tests in their own order."""
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    shared = {path: uses_shared_run(path) for path in {item.path for item in items}}
    items.sort(key=lambda item: -1 if shared[item.path] else rank.get(item.path.name, len(rank)))


@pytest.hookimpl(optionalhook=True)  # `-p no:xdist` runs without it
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    """xdist's units of work: each test file is one (its module fixtures built once), except
    that every file using the shared `pipeline_run` goes to one worker, so that run (minutes)
    is built once per session instead of once per worker."""
    from xdist.scheduler import LoadScopeScheduling

    class SharedRunScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            file = nodeid.split("::", 1)[0]
            return SHARED_RUN if uses_shared_run(config.rootpath / file) else file

    return SharedRunScheduling(config, log)


@pytest.fixture(scope="session")
def sample() -> Path:
    if not SAMPLE.is_file():
        pytest.skip(f"real Taobao sample not found at {SAMPLE} (set SHOPGUIDE_TAOBAO_SAMPLE)")
    return SAMPLE


@pytest.fixture(scope="session")
def olist() -> Path:
    if not (OLIST / "olist_orders_dataset.csv").is_file():
        pytest.skip(f"Olist sample not found at {OLIST} (set SHOPGUIDE_OLIST)")
    return OLIST


def copy_feature_repo(dest: Path) -> Path:
    """A fresh Feast repo (the project's definitions, no data) at `dest`."""
    return fresh_repo(ROOT / "feature_repo", dest)


def write_params(workdir: Path, raw_path: Path, **overrides: dict) -> Path:
    """A params.yaml for tests: the project's own, with paths inside `workdir`, fewer epochs."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["data"]["raw_path"] = str(raw_path)
    raw["features"]["repo"] = str(workdir / "feature_repo")
    raw["validation"]["report_dir"] = str(workdir / "reports/validation")
    raw["registry"]["path"] = str(workdir / "registry")
    raw["deploy"]["output"] = str(workdir / "k8s/inferenceservice.yaml")
    raw["train"]["max_epochs"] = 6
    raw["finetune"]["max_epochs"] = 3
    # Fewer sampled items and a shorter sequence: the same mechanisms on half the rows.
    raw["sampling"] |= {"recent": 2, "popularity": 1, "uniform": 1}
    raw["features"]["sequence_length"] = 8
    raw["evaluation"]["bootstrap_samples"] = 100
    raw["gate"]["bootstrap_samples"] = 200
    # A loaded test machine must not refuse the shared run on latency; test_gate checks that
    # the latency rule refuses, with a budget no server can meet.
    raw["gate"]["infra"]["p99_latency_ms"] = 5000
    for section, values in overrides.items():
        raw[section].update(values)
    path = workdir / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@dataclass(frozen=True)
class PipelineRun:
    """Paths of one complete run of every step on the real sample."""

    workdir: Path
    params_path: Path
    params: Params
    events: Path
    exposures: Path
    queries: Path
    training_set: Path
    ranking_set: Path
    feature_repo: Path
    pretrained: Path
    candidate: Path
    evaluation: Path
    decision: Path
    registry: Path

    def art(self, name: str) -> Path:
        return self.workdir / name


@pytest.fixture(scope="session")
def pipeline_run(sample: Path, tmp_path_factory: pytest.TempPathFactory) -> PipelineRun:
    from shopguide.evaluate import evaluate_step
    from shopguide.exposures import build_exposures
    from shopguide.features import build_features
    from shopguide.finetune import finetune_step
    from shopguide.gate import gate_step
    from shopguide.ingest import ingest_taobao
    from shopguide.promote import promote_step
    from shopguide.ranking.queries import build_queries
    from shopguide.train import train_step

    w = tmp_path_factory.mktemp("pipeline")
    repo = copy_feature_repo(w / "feature_repo")
    params_path = write_params(w, sample)
    p = load_params(params_path)
    run = PipelineRun(
        workdir=w,
        params_path=params_path,
        params=p,
        events=w / "events.parquet",
        exposures=w / "exposures.parquet",
        queries=w / "queries.parquet",
        training_set=w / "training_set.parquet",
        ranking_set=w / "ranking_set.parquet",
        feature_repo=repo,
        pretrained=w / "models/pretrained",
        candidate=w / "models/candidate",
        evaluation=w / "metrics/evaluate.json",
        decision=w / "gate/decision.json",
        registry=w / "registry",
    )
    ingest_taobao(sample, run.events, p.data)
    build_exposures(run.events, run.exposures, p)
    build_queries(run.events, run.queries, p)
    build_features(
        run.events, run.exposures, run.queries, repo, run.training_set, run.ranking_set, p
    )
    train_step(
        run.training_set,
        run.pretrained,
        w / "metrics/train.json",
        w / "plots/train.csv",
        p,
        ranking_set=run.ranking_set,
    )
    finetune_step(
        run.training_set,
        run.pretrained,
        run.candidate,
        w / "metrics/finetune.json",
        w / "plots/finetune.csv",
        p,
        ranking_set=run.ranking_set,
    )
    evaluate_step(
        run.training_set,
        run.ranking_set,
        run.candidate,
        run.evaluation,
        w / "plots/roc.csv",
        w / "reports/evaluation.html",
        p,
    )
    gate_step(run.evaluation, run.training_set, run.ranking_set, run.registry, run.decision, p)
    promote_step(
        run.candidate, run.decision, run.evaluation, run.training_set, w / "gate/promotion.json", p
    )
    return run


@pytest.fixture(scope="session")
def half_sample(sample: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real sample's lines of every other user (even user_id), as the raw file: the
    whole-pipeline orchestration tests (KFP, DVC) run on half the rows; the model's results are
    asserted on the full sample (`pipeline_run`)."""
    out = tmp_path_factory.mktemp("half_sample") / "UserBehavior_half.csv"
    with sample.open() as src, out.open("w") as dst:
        for line in src:
            user = line.split(",", 1)[0]
            if user.isdigit() and int(user) % 2 == 0:
                dst.write(line)
    return out
