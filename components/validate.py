"""Component of the `validate` step (as `shopguide validate --suite ...`)."""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Output

from components.settings import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def validate(
    suite: str,
    table: Input[Dataset],
    params_json: str,
    docs: Output[HTML],
    metrics: Output[Metrics],
    report: Output[Artifact],
    profile_dir: str = "",
) -> None:
    """Great Expectations suite `events` or `training-set` on `table`.

    Any failed expectation fails the task, so nothing downstream runs on bad data. `report` is
    the report directory (JSON summary and the whole Data Docs site); `docs` is this run's Data
    Docs page, which is self-contained enough for the KFP UI to render on its own.
    `profile_dir` (events suite): where the accepted event profile lives between runs, so the
    drift check compares with the last accepted run (empty: the task's own report, i.e. none).
    """
    import shutil
    from pathlib import Path

    from shopguide.logs import setup_logging

    setup_logging()
    from shopguide.config import params_from_json
    from shopguide.errors import ShopguideError
    from shopguide.io import write_json
    from shopguide.validation import raise_on_failure, validate_events, validate_training_set

    suites = ("events", "training-set")
    if suite not in suites:
        raise ShopguideError(f"unknown validation suite {suite!r}; known: {sorted(suites)}")
    source, report_dir = Path(table.path), Path(report.path)
    params = params_from_json(params_json)
    if suite == "events":
        profile = Path(profile_dir) if profile_dir else None
        result = validate_events(source, params, report_dir, profile)
    else:
        result = validate_training_set(source, params, report_dir)
    metrics.log_metric("expectations", len(result.results))
    metrics.log_metric("failed_expectations", sum(not r["success"] for r in result.results))
    # The logged values as the artifact's file too: a cached artifact is reused by its file.
    write_json(Path(metrics.path), dict(metrics.metadata))
    pages = sorted((report_dir / "data_docs" / "validations").rglob("*.html"))
    shutil.copyfile(pages[-1], docs.path)
    raise_on_failure(result, source)
