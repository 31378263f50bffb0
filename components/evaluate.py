"""Component of the `evaluate` step (as `shopguide evaluate`)."""

from kfp import dsl
from kfp.dsl import HTML, Artifact, ClassificationMetrics, Dataset, Input, Metrics, Model, Output

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
    from shopguide.io import write_json

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
    # The logged values as the artifact's file too: a cached artifact is reused by its file.
    write_json(Path(metrics.path), dict(metrics.metadata))


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def evaluated_tasks(evaluation: Input[Artifact]) -> list:
    """The tasks the evaluation scored with both classes in the test split (a ROC curve needs
    both), to plot one ClassificationMetrics each."""
    from pathlib import Path

    from shopguide.io import read_json

    overall = read_json(Path(evaluation.path))["overall"]
    return [task for task, m in overall.items() if 0 < m["positives"] < m["rows"]]


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def task_plots(
    task: str,
    evaluation: Input[Artifact],
    roc: Input[Dataset],
    plots: Output[ClassificationMetrics],
) -> None:
    """`task`'s test ROC curve and its confusion matrix (at the threshold of largest
    tpr - fpr) as a ClassificationMetrics artifact, which the KFP UI plots."""
    from pathlib import Path

    from shopguide.logs import setup_logging

    setup_logging()
    from shopguide.classification import task_curves
    from shopguide.io import read_json, write_json

    curves = task_curves(Path(roc.path), read_json(Path(evaluation.path)), task)
    plots.log_roc_curve(curves["fpr"], curves["tpr"], curves["threshold"])
    plots.log_confusion_matrix(curves["categories"], curves["matrix"])
    plots.metadata["task"] = task
    plots.metadata["confusion_matrix_threshold"] = curves["operating_threshold"]
    write_json(Path(plots.path), {"task": task, **curves})
