"""The shopguide training pipeline for Kubeflow Pipelines v2, the same DAG as `dvc.yaml`.

`python -m pipelines.training_pipeline` compiles it to `pipelines/training_pipeline.yaml`, the
file to upload; a test fails when that file is stale.
"""

from kfp import dsl

from components.finetune import finetune
from components.train import train
from pipelines.cluster import PARAMS, ROOT, compile_pipeline, on_cluster
from pipelines.stages import (
    FEATURE_REPO,
    RAW_PATH,
    REGISTRY,
    VALIDATION_DIR,
    gate_and_promote,
    training_set,
)

COMPILED = ROOT / "pipelines" / "training_pipeline.yaml"
# The repo's params.yaml as the default settings. Its paths are relative and the path-like
# settings that matter are overridden by pipeline parameters, so the compiled file does not
# depend on the machine it was compiled on.
DEFAULT_PARAMS_JSON = PARAMS.model_dump_json()


@dsl.pipeline(
    name="shopguide-training",
    description="Ingest, validate, build features, train, fine-tune, evaluate and gate a "
    "shopguide MMoE; promote it to champion and deploy it only when the gate passes.",
)
def training_pipeline(
    raw_path: str = RAW_PATH,
    feature_repo: str = FEATURE_REPO,
    registry: str = REGISTRY,
    validation_dir: str = VALIDATION_DIR,
    params_json: str = DEFAULT_PARAMS_JSON,
    deploy: bool = True,
) -> str:
    """Returns "promoted <version>" or "refused: <failed checks>", whichever branch ran.

    `raw_path`, `feature_repo`, `registry` and `validation_dir` are paths on the data volume
    every task mounts: the raw CSV, the Feast repo (serving reads its online store), the model
    registry and the accepted event profile (the drift check's reference across runs).
    `params_json` holds the model, training and gate settings; `deploy` creates or patches the
    InferenceService on promotion.
    """
    data, ranking, checked = training_set(raw_path, feature_repo, validation_dir, params_json)
    trained = on_cluster(
        train(training_set=data, ranking_set=ranking, params_json=params_json).after(checked),
        gpu=True,
        retry=True,
        gpus=PARAMS.kubeflow.train_accelerator_limit,
    )
    tuned = on_cluster(
        finetune(
            training_set=data,
            ranking_set=ranking,
            pretrained=trained.outputs["model"],
            params_json=params_json,
        ),
        gpu=True,
        retry=True,
    )
    return gate_and_promote(
        tuned.outputs["model"],
        trained.outputs["model"],
        data,
        ranking,
        raw_path,
        feature_repo,
        registry,
        params_json,
        deploy,
    )


if __name__ == "__main__":
    print(compile_pipeline(training_pipeline, COMPILED))
