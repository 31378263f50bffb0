"""Component of the `train` step (as `shopguide train`)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components.settings import GPU_IMAGE


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def train(
    training_set: Input[Dataset],
    ranking_set: Input[Dataset],
    params_json: str,
    model: Output[Model],
    metrics: Output[Metrics],
    history: Output[Dataset],
) -> None:
    """Pre-train the model on the old categories (examples and training queries) with early
    stopping, on every GPU the task was given (`kubeflow.train_accelerator_limit`: one
    `torchrun` process per GPU, one node).

    The metrics file holds the step's full JSON; the logged scalars (per-task validation AUC)
    are what the KFP UI compares across runs.
    """
    from pathlib import Path

    from shopguide.logs import setup_logging

    setup_logging()
    from shopguide.config import params_from_json
    from shopguide.launch import train_on_all_gpus

    result = train_on_all_gpus(
        Path(training_set.path),
        Path(model.path),
        Path(metrics.path),
        Path(history.path),
        params_from_json(params_json),
        ranking_set=Path(ranking_set.path),
    )
    for task, m in result["validation"].items():
        if m["auc"] is not None:
            metrics.log_metric(f"validation_auc_{task}", m["auc"])
    metrics.log_metric("best_epoch", result["best_epoch"])
    metrics.log_metric("processes", result["processes"])
