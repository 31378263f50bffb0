"""The Kubeflow pipeline: the committed YAML is current, and a local run takes the right branch."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from kfp import local
from kfp.dsl import Artifact

from components.champion import with_new_categories
from components.gate import gate
from components.promote import report_refusal
from components.settings import DEFAULT_GPU_IMAGE, DEFAULT_IMAGE, GPU_IMAGE, IMAGE
from pipelines import finetune_pipeline as finetune_module
from pipelines import training_pipeline as training_module
from pipelines.cluster import compile_pipeline
from pipelines.finetune_pipeline import finetune_pipeline
from pipelines.training_pipeline import training_pipeline
from shopguide.config import Params, load_params, params_from_json
from shopguide.errors import ShopguideError
from shopguide.io import fingerprint, read_json
from shopguide.model.tensors import is_new_category
from shopguide.registry import champion, versions
from tests.conftest import PipelineRun, copy_feature_repo, write_params

# The local runner warns that the image names no Python (its tasks run in this venv instead)
# and that display names do nothing locally; both are expected here.
pytestmark = [
    pytest.mark.filterwarnings("ignore:You may be attemping:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:Task .* settings \\[.*\\]:UserWarning"),
]


@pytest.mark.parametrize(
    ("module", "pipeline"),
    [(training_module, training_pipeline), (finetune_module, finetune_pipeline)],
    ids=["train", "finetune"],
)
def test_compiled_pipeline_is_current(tmp_path: Path, module, pipeline) -> None:
    if (IMAGE, GPU_IMAGE) != (DEFAULT_IMAGE, DEFAULT_GPU_IMAGE):
        pytest.skip("SHOPGUIDE_(GPU_)IMAGE is set; the committed YAML uses the default images")
    fresh = compile_pipeline(pipeline, tmp_path / module.COMPILED.name).read_text()
    assert fresh == module.COMPILED.read_text(), (
        f"{module.COMPILED} is stale; regenerate it with `python -m {module.__name__}`"
    )


def test_compiled_training_pipeline_asks_for_gpus_and_retries() -> None:
    spec = yaml.safe_load_all(training_module.COMPILED.read_text())
    pipeline, platform = list(spec)
    executors = pipeline["deploymentSpec"]["executors"]
    train = executors["exec-train"]["container"]["resources"]
    assert train["accelerator"]["resourceType"] == "nvidia.com/gpu"
    assert train["accelerator"]["resourceCount"] == "1"
    assert executors["exec-evaluate"]["container"]["resources"]["cpuRequest"] == 1
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert k8s["exec-train"]["nodeSelector"] == {"labels": {"nvidia.com/gpu.present": "true"}}
    assert k8s["exec-train"]["tolerations"] == [
        {"effect": "NoSchedule", "key": "nvidia.com/gpu", "operator": "Exists"}
    ]
    assert "nodeSelector" not in k8s["exec-evaluate"]
    assert all(e["pvcMount"][0]["constant"] == "shopguide-data" for e in k8s.values())
    tasks = pipeline["root"]["dag"]["tasks"]
    assert tasks["train"]["retryPolicy"]["maxRetryCount"] == 2
    assert "retryPolicy" not in tasks["evaluate"]


def _tasks(spec: dict) -> dict[str, dict]:
    """Every task of a compiled pipeline, sub-DAGs (conditions, loops) included."""
    found = dict(spec["root"]["dag"]["tasks"])
    for component in spec["components"].values():
        found.update(component.get("dag", {}).get("tasks", {}))
    return found


def test_only_steps_whose_inputs_are_all_they_read_are_cached() -> None:
    for module in (training_module, finetune_module):
        pipeline, platform = yaml.safe_load_all(module.COMPILED.read_text())
        tasks = _tasks(pipeline)
        cached = {n for n, t in tasks.items() if t.get("cachingOptions", {}).get("enableCache")}
        uncached = {n for n, t in tasks.items() if "componentRef" in t} - cached
        assert {"ingest", "features", "validate-2", "finetune", "evaluate"} <= cached
        assert {
            "fingerprint-inputs",
            "validate",
            "sync-feature-repo",
            "gate",
            "promote",
            "deploy-champion",
        } <= uncached
        # The paths' data goes into the cache keys as parameters.
        ingest = tasks["ingest"]["inputs"]["parameters"]["raw_fingerprint"]
        assert ingest["taskOutputParameter"] == {
            "outputParameterKey": "raw",
            "producerTask": "fingerprint-inputs",
        }
        features = tasks["features"]["inputs"]["parameters"]["repo_fingerprint"]
        assert features["taskOutputParameter"]["producerTask"] == "fingerprint-inputs"
        # Every step reads the namespace's one Feast config, the ConfigMap the predictor reads.
        executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
        for name, executor in executors.items():
            (config_map,) = executor["configMapAsVolume"]
            assert config_map["configMapName"] == "shopguide-feast", name
            assert config_map["mountPath"] == "/etc/shopguide/feast"
            (env,) = executor["fieldPathAsEnv"]
            assert env["name"] == "FEAST_FS_YAML_FILE_PATH"
            annotation = env["fieldPath"].split("'")[1]
            assert executor["podMetadata"]["annotations"][annotation] == (
                "/etc/shopguide/feast/feature_store.yaml"
            )
    pipeline, _ = yaml.safe_load_all(finetune_module.COMPILED.read_text())
    tasks = _tasks(pipeline)
    assert "cachingOptions" not in tasks["current-champion"] or not tasks["current-champion"][
        "cachingOptions"
    ].get("enableCache")
    assert tasks["champion-model"]["cachingOptions"]["enableCache"] is True


def test_a_multi_gpu_step_gets_its_gpus_and_shared_memory(tmp_path: Path) -> None:
    from kfp import dsl

    from pipelines.cluster import on_cluster

    # No parameters: this module's postponed annotations would reach kfp as strings.
    @dsl.pipeline(name="gpus")
    def gpus():
        on_cluster(with_new_categories(params_json="{}", new_category_ids=[1]), gpu=True, gpus=4)
        on_cluster(with_new_categories(params_json="{}", new_category_ids=[2]), gpu=True)

    pipeline, platform = yaml.safe_load_all(
        compile_pipeline(gpus, tmp_path / "gpus.yaml").read_text()
    )
    executors = pipeline["deploymentSpec"]["executors"]
    counts = sorted(
        e["container"]["resources"]["accelerator"]["resourceCount"] for e in executors.values()
    )
    assert counts == ["1", "4"]
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    four = next(
        k8s[n]
        for n, e in executors.items()
        if e["container"]["resources"]["accelerator"]["resourceCount"] == "4"
    )
    assert four["emptyDirMounts"] == [
        {"volumeName": "dshm", "mountPath": "/dev/shm", "medium": "Memory", "sizeLimit": "8Gi"}
    ]
    assert sum("emptyDirMounts" in e for e in k8s.values()) == 1


def _artifact(path: Path) -> Artifact:
    """An artifact at `path`, for calling a component's function directly."""
    artifact = Artifact()
    artifact.path = str(path)
    return artifact


@pytest.mark.parametrize(("auc", "outcome"), [(0.7, "passed"), (0.5, "refused")])
def test_gate_returns_the_branch_to_take(
    tmp_path: Path, pipeline_run: PipelineRun, auc: float, outcome: str
) -> None:
    params = pipeline_run.params.model_copy(
        update={
            "gate": pipeline_run.params.gate.model_copy(
                update={
                    "infra": pipeline_run.params.gate.infra.model_copy(update={"enabled": False}),
                    "gauc_floor": {},
                }
            )
        }
    )
    evaluation = tmp_path / "evaluate.json"
    evaluation.write_text(json.dumps({"overall": {t: {"auc": auc} for t in params.protocol.tasks}}))
    decision = tmp_path / "decision.json"
    result = gate.python_func(
        evaluation=_artifact(evaluation),
        training_set=_artifact(pipeline_run.training_set),
        ranking_set=_artifact(pipeline_run.ranking_set),
        model=_artifact(pipeline_run.candidate),
        feature_repo=str(pipeline_run.feature_repo),
        registry=str(tmp_path / "registry"),
        params_json=params.model_dump_json(),
        decision=_artifact(decision),
        summary=_artifact(tmp_path / "summary.md"),
    )
    assert result == outcome
    recorded = read_json(decision)
    assert recorded["passed"] is (outcome == "passed")
    assert recorded["candidate"] == str(pipeline_run.candidate)
    summary = (tmp_path / "summary.md").read_text()
    assert summary.startswith(f"## Gate {outcome} (champion: none)")
    # One row per AUC floor: with the floors of params.yaml, AUC 0.5 clears every floor but
    # click's 0.55 (>=), and that one failed floor is enough to refuse.
    floors = params.gate.auc_floor
    cleared = [t for t in params.protocol.tasks if auc >= floors[t]]
    assert len(cleared) == (len(params.protocol.tasks) if outcome == "passed" else 3)
    assert summary.count("| pass |") == len(cleared)
    assert summary.count("| **fail** |") == len(floors) - len(cleared)
    if outcome == "refused":
        assert "| **fail** | auc_floor click: AUC 0.5000 < 0.5500 |" in summary


def test_with_new_categories_sets_and_validates_the_ids() -> None:
    params_json = Params().model_dump_json()
    tuned = params_from_json(
        with_new_categories.python_func(params_json=params_json, new_category_ids=[5, 7])
    )
    assert tuned.finetune.new_category_ids == (5, 7)
    new = is_new_category(pd.Series([5, 6, 7, 9]), tuned.finetune)
    assert new.tolist() == [True, False, True, False]
    for bad in ([], ["shoes"]):
        with pytest.raises(ShopguideError, match="new_category_ids"):
            with_new_categories.python_func(params_json=params_json, new_category_ids=bad)


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
        validation_dir=str(registry.parent / "validation"),
        params_json=params.model_dump_json(),
        deploy=False,
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
    assert sorted(p.name for p in run_dir.iterdir()) == ["fingerprint-inputs", "ingest", "validate"]
    assert not (feature_repo / "data").exists()


@pytest.mark.slow
def test_local_runs_promote_then_refuse_a_finetune(
    sample: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The training pipeline promotes; the fine-tuning pipeline, held to floors no model can
    reach, takes the refusal branch and leaves that champion in place."""
    # Tasks inherit the working directory; keep anything they might drop there out of the repo.
    monkeypatch.chdir(tmp_path)
    feature_repo = copy_feature_repo(tmp_path / "feature_repo")
    registry = tmp_path / "registry"
    # Three epochs clear the gate on the sample (its best epoch is early); the train step's
    # fine-tune to the new categories takes one.
    fewer = {"train": {"max_epochs": 3}, "finetune": {"max_epochs": 1}}
    params = load_params(write_params(tmp_path, sample, **fewer))
    kfp_root = tmp_path / "kfp_root"

    outcome, run_dir = _run(kfp_root / "pass", params, sample, feature_repo, registry)
    first = champion(registry)
    assert first is not None
    assert outcome == f"promoted {first.name}"
    record = read_json(run_dir / "promote" / "promotion")
    assert record["promoted"] is True
    assert record["version"] == first.name
    assert (run_dir / "promote" / "inference_service").is_file()
    assert first.metadata["parent"] == fingerprint(run_dir / "train" / "model")
    assert not (run_dir / "deploy-champion").exists()  # deploy=False: no cluster here
    assert not (run_dir / "report-refusal").exists()
    # The accepted event profile outlives the run's own artifacts: the next run checks drift.
    assert (tmp_path / "validation" / "accepted_profile.json").is_file()
    # The gate scored the candidate artifact it was handed, not a path from another task.
    decision = read_json(run_dir / "gate" / "decision")
    assert decision["candidate"].startswith(str(run_dir / "finetune"))
    assert any(c["rule"].startswith("serving") and c["passed"] for c in decision["checks"])

    # Fine-tune the champion on the five busiest categories under unreachable floors.
    frame = pd.read_parquet(run_dir / "features" / "training_set")
    new_ids = [int(c) for c in frame["category_id"].value_counts().index[:5]]
    strict = params.model_copy(
        update={
            "gate": params.gate.model_copy(
                update={"auc_floor": dict.fromkeys(params.protocol.tasks, 0.99)}
            ),
            # Refused whatever it learns: one epoch is enough to reach the gate.
            "finetune": params.finetune.model_copy(update={"max_epochs": 1}),
        }
    )
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(kfp_root / "ft"))
    tuned = finetune_pipeline(
        new_category_ids=new_ids,
        raw_path=str(sample),
        feature_repo=str(feature_repo),
        registry=str(registry),
        validation_dir=str(tmp_path / "validation"),
        params_json=strict.model_dump_json(),
        deploy=False,
    )
    (ft_dir,) = (kfp_root / "ft").iterdir()
    # Its events were checked for drift against the first run's accepted profile.
    reports = [json.loads(f.read_text()) for f in ft_dir.rglob("*.json") if f.stat().st_size]
    drift = [
        r
        for rep in reports
        if isinstance(rep, dict)
        for r in rep.get("results") or []
        if r.get("suite") == "drift"
    ]
    assert drift and all(r["success"] for r in drift), drift
    assert read_json(ft_dir / "finetune" / "metrics")["finetune_rows"] > 0
    assert tuned.output.startswith("refused: auc_floor")
    decision = read_json(ft_dir / "gate" / "decision")
    assert decision["champion"] == first.name
    assert decision["candidate"].startswith(str(ft_dir / "finetune"))
    refusal = read_json(ft_dir / "report-refusal" / "refusal")
    assert refusal["promoted"] is False
    assert refusal["champion"] == first.name
    assert refusal["reasons"]
    assert not (ft_dir / "promote").exists()
    assert champion(registry) == first
    assert [v.name for v in versions(registry)][-1] == first.name


def test_gpu_steps_run_in_the_cuda_image() -> None:
    """train and finetune reserve a GPU, so they run in the CUDA build; the rest in the CPU
    image."""
    spec = next(yaml.safe_load_all(training_module.COMPILED.read_text()))
    images = {
        name.removeprefix("exec-"): e["container"]["image"]
        for name, e in spec["deploymentSpec"]["executors"].items()
    }
    assert images["train"] == images["finetune"] == DEFAULT_GPU_IMAGE
    assert images["ingest"] == images["gate"] == DEFAULT_IMAGE
