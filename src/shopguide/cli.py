"""The `shopguide` command: one subcommand per pipeline step, each a thin caller of the step
function that DVC stages and KFP components run too."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, TypeVar

import typer

from shopguide.config import Params, load_params
from shopguide.errors import GateRefused, ShopguideError
from shopguide.logs import setup_logging

log = logging.getLogger("shopguide")
app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Train, gate and serve multi-task recommenders for shopping guides.",
)
F = TypeVar("F", bound=Callable)

ParamsOpt = Annotated[Path, typer.Option("--params", help="params.yaml to read settings from")]
EVENTS = Path("artifacts/data/events.parquet")
EXPOSURES = Path("artifacts/data/exposures.parquet")
TRAINING_SET = Path("artifacts/data/training_set.parquet")
PRETRAINED = Path("artifacts/models/pretrained")
CANDIDATE = Path("artifacts/models/candidate")
EVALUATION = Path("metrics/evaluate.json")
DECISION = Path("artifacts/gate/decision.json")


def step(func: F) -> F:
    """Turn ShopguideErrors into a one-paragraph message and the error's exit code."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        setup_logging()
        try:
            return func(*args, **kwargs)
        except ShopguideError as exc:
            log.error("%s", exc)
            raise typer.Exit(exc.exit_code) from None

    return wrapper  # type: ignore[return-value]


def _params(path: Path) -> Params:
    return load_params(path)


@app.command()
@step
def ingest(
    source: Annotated[Path | None, typer.Option(help="raw CSV; default data.raw_path")] = None,
    events: Path = EVENTS,
    exposures: Path = EXPOSURES,
    summary: Path = Path("artifacts/data/ingest.json"),
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Raw Taobao UserBehavior CSV -> canonical events, labelled exposures and the time split."""
    from shopguide.exposures import build_exposures
    from shopguide.ingest import ingest_taobao, summary_dict
    from shopguide.io import write_json

    p = _params(params)
    result = ingest_taobao(source or p.data.raw_path, events, p.data)
    splits = build_exposures(events, exposures, p.protocol, p.data)
    write_json(summary, {"events": summary_dict(result), "exposures": splits})


class Suite(StrEnum):
    events = "events"
    training_set = "training-set"


@app.command()
@step
def validate(
    suite: Annotated[Suite, typer.Option(help="which table to check")],
    input: Annotated[Path | None, typer.Option(help="table to check; default by suite")] = None,
    report_dir: Annotated[Path | None, typer.Option(help="default validation.report_dir")] = None,
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Great Expectations suites; any failed expectation stops the pipeline here."""
    from shopguide.validation import raise_on_failure, validate_events, validate_training_set

    p = _params(params)
    report_dir = report_dir or p.validation.report_dir
    if suite is Suite.events:
        path = input or EVENTS
        report = validate_events(path, p, report_dir)
    else:
        path = input or TRAINING_SET
        report = validate_training_set(path, p, report_dir)
    raise_on_failure(report, path)
    log.info(
        "%s suite passed: %d expectations; Data Docs at %s",
        suite.value,
        len(report.results),
        report.docs_path,
    )


@app.command()
@step
def features(
    events: Path = EVENTS,
    exposures: Path = EXPOSURES,
    repo: Annotated[Path | None, typer.Option(help="Feast repo; default features.repo")] = None,
    out: Path = TRAINING_SET,
    summary: Path = Path("artifacts/data/features.json"),
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Feature tables, `feast apply`, point-in-time training set, online materialization."""
    from shopguide.features import build_features
    from shopguide.io import write_json

    p = _params(params)
    write_json(summary, build_features(events, exposures, repo or p.features.repo, out, p))


@app.command()
@step
def train(
    training_set: Path = TRAINING_SET,
    model_dir: Path = PRETRAINED,
    metrics: Path = Path("metrics/train.json"),
    history: Path = Path("plots/train_history.csv"),
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Train the MMoE (cart, fav, buy) with early stopping on a validation slice."""
    from shopguide.train import train_step

    train_step(training_set, model_dir, metrics, history, _params(params))


@app.command()
@step
def finetune(
    training_set: Path = TRAINING_SET,
    base_model: Path = PRETRAINED,
    model_dir: Path = CANDIDATE,
    metrics: Path = Path("metrics/finetune.json"),
    history: Path = Path("plots/finetune_history.csv"),
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Fine-tune on the new categories with the shared layers frozen."""
    from shopguide.finetune import finetune_step

    finetune_step(training_set, base_model, model_dir, metrics, history, _params(params))


@app.command()
@step
def evaluate(
    training_set: Path = TRAINING_SET,
    model_dir: Path = CANDIDATE,
    metrics: Path = EVALUATION,
    roc: Path = Path("plots/roc.csv"),
    report: Path = Path("reports/evaluation.html"),
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Per-task AUC and log loss on the test split, with ROC plots and an HTML report."""
    from shopguide.evaluate import evaluate_step

    evaluate_step(training_set, model_dir, metrics, roc, report, _params(params))


@app.command()
@step
def gate(
    evaluation: Path = EVALUATION,
    training_set: Path = TRAINING_SET,
    registry: Annotated[Path | None, typer.Option(help="default registry.path")] = None,
    decision: Path = DECISION,
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Pass or refuse the candidate; exit code 3 on refusal, decision JSON either way."""
    from shopguide.gate import gate_step

    p = _params(params)
    result = gate_step(evaluation, training_set, registry or p.registry.path, decision, p)
    if not result["passed"]:
        raise GateRefused(
            f"gate refused the candidate (see {decision}): " + "; ".join(result["reasons"])
        )


@app.command()
@step
def promote(
    model_dir: Path = CANDIDATE,
    decision: Path = DECISION,
    evaluation: Path = EVALUATION,
    training_set: Path = TRAINING_SET,
    parent: Path = PRETRAINED,
    out: Path = Path("artifacts/gate/promotion.json"),
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Register a gate-approved model as champion and render its InferenceService."""
    from shopguide.io import fingerprint
    from shopguide.promote import promote_step

    p = _params(params)
    parent_id = fingerprint(parent) if parent.is_dir() else None
    record = promote_step(model_dir, decision, evaluation, training_set, out, p, parent_id)
    if record["promoted"]:
        log.info(
            "champion is %s. Report: reports/evaluation.html. Start the endpoint with "
            "`shopguide serve` and POST to http://localhost:%d/v1/models/%s:predict",
            record["version"],
            p.serving.http_port,
            p.serving.model_name,
        )


@app.command()
@step
def serve(
    registry: Annotated[Path | None, typer.Option(help="serve its champion")] = None,
    model_dir: Annotated[Path | None, typer.Option(help="serve this model directory")] = None,
    repo: Annotated[Path | None, typer.Option(help="Feast repo; default features.repo")] = None,
    http_port: Annotated[int | None, typer.Option(help="default serving.http_port")] = None,
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Start the KServe model server answering POST /v1/models/<name>:predict."""
    from shopguide.serving.predictor import serve as run_server

    p = _params(params)
    run_server(
        p.serving,
        repo or p.features.repo,
        model_dir,
        None if model_dir else (registry or p.registry.path),
        p.serving.http_port if http_port is None else http_port,
    )


def main() -> None:
    app()


if __name__ == "__main__":
    main()
