"""The Kubeflow pipeline: the committed YAML is current, and a local run takes the right branch."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from kfp.dsl import Artifact

from components.champion import with_new_categories
from components.gate import gate
from components.promote import report_refusal
from components.settings import DEFAULT_GPU_IMAGE, DEFAULT_IMAGE, GPU_IMAGE, IMAGE
from pipelines import dataset_pipeline as dataset_module
from pipelines import finetune_pipeline as finetune_module
from pipelines import training_pipeline as training_module
from pipelines.cluster import compile_pipeline
from pipelines.dataset_pipeline import dataset_pipeline
from pipelines.finetune_pipeline import finetune_pipeline
from pipelines.training_pipeline import training_pipeline
from shopguide.config import Params, params_from_json
from shopguide.errors import ShopguideError
from shopguide.io import read_json
from shopguide.model.tensors import is_new_category
from tests.conftest import PipelineRun

# The local runner warns that the image names no Python (its tasks run in this venv instead)
# and that display names do nothing locally; both are expected here.
pytestmark = [
    pytest.mark.filterwarnings("ignore:You may be attemping:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:Task .* settings \\[.*\\]:UserWarning"),
]


@pytest.mark.parametrize(
    ("module", "pipeline"),
    [
        (training_module, training_pipeline),
        (finetune_module, finetune_pipeline),
        (dataset_module, dataset_pipeline),
    ],
    ids=["train", "finetune", "dataset"],
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


def test_no_step_of_the_dataset_pipeline_is_cached_and_every_one_mounts_the_volume() -> None:
    """Each reads the schema and tables by path (no cache key sees them) or the registry."""
    pipeline, platform = yaml.safe_load_all(dataset_module.COMPILED.read_text())
    tasks = {n: t for n, t in _tasks(pipeline).items() if not n.startswith("condition")}
    assert set(tasks) == {
        "dataset-train",
        "dataset-features",
        "dataset-gate",
        "dataset-promote",
        "report-refusal",
    }
    assert not any(t.get("cachingOptions", {}).get("enableCache") for t in tasks.values())
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert len(executors) == len(tasks)
    mount = dataset_module.PARAMS.deploy.data_mount
    assert all(e["pvcMount"][0]["mountPath"] == mount for e in executors.values())


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


def test_fingerprinting_names_feasts_config_variable_without_importing_feast() -> None:
    """The fingerprint step runs on every pipeline run: it spells out Feast's variable rather
    than pay Feast's import, and the spelling is Feast's own."""
    import subprocess
    import sys

    from feast.constants import FEAST_FS_YAML_FILE_PATH_ENV_NAME

    from shopguide import caching

    assert caching.FEAST_FS_YAML_FILE_PATH_ENV_NAME == FEAST_FS_YAML_FILE_PATH_ENV_NAME
    code = "import sys, shopguide.caching; print('feast' in sys.modules)"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert loaded.stdout.strip() == "False", loaded.stderr
