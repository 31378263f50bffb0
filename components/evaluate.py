"""Component of the `evaluate` step (as `shopguide evaluate`)."""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Model, Output

from components.settings import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def evaluate(
    training_set: Input[Dataset],
    ranking_set: Input[Dataset],
    model: Input[Model],
    params_json: str,
    evaluation: Output[Artifact],
    metrics: Output[Metrics],
    report: Output[HTML],
    roc: Output[Dataset],
) -> None:
    """Per-task test AUC, log loss and GAUC of the candidate, overall and per category slice,
    and its taobao-rank-v1 ranking metrics.

    `evaluation` is the JSON the gate and the registry read; `metrics` carries the test AUCs,
    GAUCs and MRRs for the UI, `report` the HTML page with ROC curves, `roc` the curve points.
    """
    from pathlib import Path

    from shopguide.logs import setup_logging

    setup_logging()
    from shopguide.config import params_from_json
    from shopguide.evaluate import evaluate_step

    scored = evaluate_step(
        Path(training_set.path),
        Path(ranking_set.path),
        Path(model.path),
        Path(evaluation.path),
        Path(roc.path),
        Path(report.path),
        params_from_json(params_json),
    )
    for task, m in scored["overall"].items():
        for name in ("auc", "gauc"):
            if m[name] is not None:
                metrics.log_metric(f"test_{name}_{task}", m[name])
    for task, by_score in scored["ranking"]["overall"].items():
        if by_score[task]["mrr"] is not None:
            metrics.log_metric(f"test_mrr_{task}", by_score[task]["mrr"])
    metrics.log_metric("test_mean_auc", scored["mean_auc"])
