"""Component of the `finetune` step (as `shopguide finetune`)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components.settings import GPU_IMAGE


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def finetune(
    training_set: Input[Dataset],
    ranking_set: Input[Dataset],
    pretrained: Input[Model],
    params_json: str,
    model: Output[Model],
    metrics: Output[Metrics],
    history: Output[Dataset],
) -> None:
    """Fine-tune the pre-trained model on the new categories with `finetune.strategy`.

    Logs the new-category test AUC per task before and after, the transfer the step is for,
    and the old categories' AUC change, the forgetting the gate judges. The strategy `auto`
    chose is in the `metrics` artifact's file.
    """
    from pathlib import Path

    from shopguide.logs import setup_logging

    setup_logging()
    from shopguide.config import params_from_json
    from shopguide.finetune import finetune_step

    result = finetune_step(
        Path(training_set.path),
        Path(pretrained.path),
        Path(model.path),
        Path(metrics.path),
        Path(history.path),
        params_from_json(params_json),
        ranking_set=Path(ranking_set.path),
    )
    for stage in ("before", "after"):
        for task, m in result[f"new_category_test_{stage}"].items():
            if m["auc"] is not None:
                metrics.log_metric(f"new_category_auc_{task}_{stage}", m["auc"])
    for task, change in result["old_category_auc_change"].items():
        if change is not None:
            metrics.log_metric(f"old_category_auc_change_{task}", change)
