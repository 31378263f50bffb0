"""The new-category fine-tuning pipeline: adapt the registry's champion to categories that
appeared since it was trained, then gate and promote it like the training pipeline.

`python -m pipelines.finetune_pipeline` compiles it to `pipelines/finetune_pipeline.yaml`; a
test fails when that file is stale.
"""

from kfp import dsl

from components.champion import champion_model, current_champion, with_new_categories
from components.finetune import finetune
from pipelines.cluster import ROOT, compile_pipeline, on_cluster, uncached
from pipelines.stages import (
    FEATURE_REPO,
    RAW_PATH,
    REGISTRY,
    VALIDATION_DIR,
    gate_and_promote,
    training_set,
)
from pipelines.training_pipeline import DEFAULT_PARAMS_JSON

COMPILED = ROOT / "pipelines" / "finetune_pipeline.yaml"


@dsl.pipeline(
    name="shopguide-new-category-finetune",
    description="Fine-tune the champion on new categories (finetune.strategy); gate it against "
    "the champion, old categories included, and promote it only when the gate passes.",
)
def finetune_pipeline(
    new_category_ids: list,
    raw_path: str = RAW_PATH,
    feature_repo: str = FEATURE_REPO,
    registry: str = REGISTRY,
    validation_dir: str = VALIDATION_DIR,
    params_json: str = DEFAULT_PARAMS_JSON,
    deploy: bool = True,
) -> str:
    """Returns "promoted <version>" or "refused: <failed checks>", whichever branch ran.

    `new_category_ids` are the categories to fine-tune on (and to report as new in the
    evaluation); the other parameters are the training pipeline's.
    """
    tuned_params = on_cluster(
        with_new_categories(params_json=params_json, new_category_ids=new_category_ids)
    ).outputs["Output"]
    data, ranking, checked = training_set(raw_path, feature_repo, validation_dir, params_json)
    # The champion changes with every promotion: it is looked up every run, and its copy is
    # cached per version and weights.
    named = uncached(current_champion(registry=registry), retry=True).after(checked)
    current = on_cluster(
        champion_model(registry=registry, champion=named.output), retry=True
    ).set_display_name("champion-model")
    tuned = on_cluster(
        finetune(
            training_set=data,
            ranking_set=ranking,
            pretrained=current.outputs["model"],
            params_json=tuned_params,
        ),
        gpu=True,
        retry=True,
    )
    return gate_and_promote(
        tuned.outputs["model"],
        current.outputs["model"],
        data,
        ranking,
        raw_path,
        feature_repo,
        registry,
        tuned_params,
        deploy,
    )


if __name__ == "__main__":
    print(compile_pipeline(finetune_pipeline, COMPILED))
