"""Component of the `dataset train` step."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Metrics, Model, Output

from components.settings import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def dataset_train(
    schema_path: str,
    root: str,
    params_json: str,
    model: Output[Model],
    examples: Output[Dataset],
    metrics: Output[Artifact],
    history: Output[Artifact],
    reports: Output[Artifact],
    scores: Output[Metrics],
) -> None:
    """Check the tables and examples (Great Expectations), build the examples and train the
    model on every task of the schema at `schema_path` (tables under `root`; empty: the
    schema's own). `scores` logs each task's test metric for the KFP UI."""
    from pathlib import Path

    from shopguide.logs import setup_logging

    setup_logging()
    from shopguide.config import params_from_json
    from shopguide.dataset.steps import train_step
    from shopguide.io import read_json

    reports_dir = Path(reports.path)
    reports_dir.mkdir(parents=True, exist_ok=True)
    train_step(
        Path(schema_path),
        params_from_json(params_json),
        Path(model.path),
        Path(metrics.path),
        Path(history.path),
        reports_dir,
        Path(examples.path),
        Path(root) if root else None,
    )
    for task, values in read_json(Path(metrics.path))["test"].items():
        for name, value in values.items():
            if isinstance(value, int | float):
                scores.log_metric(f"{task}.{name}", float(value))
