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

from shopguide.config import load_params
from shopguide.errors import GateRefused, ShopguideError, exit_on_error

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
QUERIES = Path("artifacts/data/queries.parquet")
TRAINING_SET = Path("artifacts/data/training_set.parquet")
RANKING_SET = Path("artifacts/data/ranking_set.parquet")
PRETRAINED = Path("artifacts/models/pretrained")
CANDIDATE = Path("artifacts/models/candidate")
EVALUATION = Path("metrics/evaluate.json")
DECISION = Path("artifacts/gate/decision.json")


def step(func: F) -> F:
    """Turn ShopguideErrors into a one-paragraph message and the error's exit code."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        return exit_on_error(func, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


@app.command()
@step
def ingest(
    source: Annotated[Path | None, typer.Option(help="raw CSV; default data.raw_path")] = None,
    events: Path = EVENTS,
    exposures: Path = EXPOSURES,
    queries: Path = QUERIES,
    summary: Path = Path("artifacts/data/ingest.json"),
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Raw data (format: data.adapter) -> canonical events, labelled examples (exposures and
    sampled items), the time split, taobao-rank-v1 queries; the summary is the data card."""
    from shopguide.adapters import ingest as ingest_raw
    from shopguide.io import refuse_directories, write_json

    p = load_params(params)
    refuse_directories(summary)
    write_json(summary, ingest_raw(source or p.data.raw_path, events, exposures, queries, p))


@app.command()
@step
def synth(
    out: Path = Path("artifacts/data/synth/events.csv"),
    truth: Path = Path("artifacts/data/synth/truth.parquet"),
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Synthetic events in the Taobao format plus every exposure's true task probabilities."""
    from shopguide.synth import generate

    generate(out, truth, load_params(params))


@app.command(name="synth-bayes")
@step
def synth_bayes(
    truth: Path = Path("artifacts/data/synth/truth.parquet"),
    exposures: Path = EXPOSURES,
    queries: Path = QUERIES,
    out: Path = Path("metrics/synth_bayes.json"),
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Bayes-optimal AUC and GAUC per task on the test exposures and the taobao-rank-v1
    metrics on the test queries, from the generator's true probabilities."""
    from shopguide.io import write_json
    from shopguide.synth import bayes_auc

    p = load_params(params)
    found = queries if queries.is_file() else None
    write_json(out, bayes_auc(truth, exposures, p.data, p.protocol, found))


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

    p = load_params(params)
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
    queries: Path = QUERIES,
    repo: Annotated[Path | None, typer.Option(help="Feast repo; default features.repo")] = None,
    out: Path = TRAINING_SET,
    ranking_out: Path = RANKING_SET,
    summary: Path = Path("artifacts/data/features.json"),
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Feature tables, `feast apply`, point-in-time training and ranking sets, online store."""
    from shopguide.features import build_features
    from shopguide.io import write_json

    p = load_params(params)
    repo = repo or p.features.repo
    write_json(summary, build_features(events, exposures, queries, repo, out, ranking_out, p))


@app.command()
@step
def train(
    training_set: Path = TRAINING_SET,
    model_dir: Path = PRETRAINED,
    metrics: Path = Path("metrics/train.json"),
    history: Path = Path("plots/train_history.csv"),
    params: ParamsOpt = Path("params.yaml"),
    checkpoint_dir: Annotated[
        Path | None, typer.Option(help="checkpoint every epoch here; resume from it")
    ] = None,
    ranking_set: Path = RANKING_SET,
) -> None:
    """Train the model named in params.yaml (the protocol's tasks) with early stopping on a
    validation slice, on the training set and the ranking set's training queries; under
    `torchrun`, data-parallel."""
    from shopguide.train import train_step

    p = load_params(params)
    train_step(training_set, model_dir, metrics, history, p, checkpoint_dir, ranking_set)


@app.command()
@step
def finetune(
    training_set: Path = TRAINING_SET,
    base_model: Annotated[
        Path | None,
        typer.Option(
            help=f"default: {PRETRAINED}, or the registry's champion with finetune.base: champion"
        ),
    ] = None,
    model_dir: Path = CANDIDATE,
    metrics: Path = Path("metrics/finetune.json"),
    history: Path = Path("plots/finetune_history.csv"),
    params: ParamsOpt = Path("params.yaml"),
    ranking_set: Path = RANKING_SET,
) -> None:
    """Fine-tune on the new categories with `finetune.strategy` (frozen, l2sp, adversarial,
    coldstart or auto); reports new- and old-category test AUC before and after."""
    from shopguide.finetune import finetune_base, finetune_step

    p = load_params(params)
    base = base_model or finetune_base(p.registry.path, PRETRAINED, p.finetune.base)
    finetune_step(training_set, base, model_dir, metrics, history, p, ranking_set)


@app.command()
@step
def evaluate(
    training_set: Path = TRAINING_SET,
    ranking_set: Path = RANKING_SET,
    model_dir: Path = CANDIDATE,
    metrics: Path = EVALUATION,
    roc: Path = Path("plots/roc.csv"),
    calibration: Path = Path("plots/calibration.csv"),
    report: Path = Path("reports/evaluation.html"),
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Test-split report: AUC, log loss, calibration error, GAUC per task and slice, and the
    taobao-rank-v1 ranking metrics (MRR, HR@3, AUC within the query).

    Each metric with a bootstrap interval; ROC and calibration plots; an HTML report."""
    from shopguide.evaluate import evaluate_step

    p = load_params(params)
    evaluate_step(training_set, ranking_set, model_dir, metrics, roc, report, p, calibration)


@app.command()
@step
def gate(
    evaluation: Path = EVALUATION,
    training_set: Path = TRAINING_SET,
    ranking_set: Path = RANKING_SET,
    model_dir: Annotated[
        Path | None, typer.Option(help="the candidate; default: the model the evaluation names")
    ] = None,
    registry: Annotated[Path | None, typer.Option(help="default registry.path")] = None,
    repo: Annotated[Path | None, typer.Option(help="Feast repo; default features.repo")] = None,
    decision: Path = DECISION,
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Pass or refuse the candidate; exit code 3 on refusal, decision JSON either way.

    Rules: AUC and GAUC floors; no regression against the champion (paired bootstrap, overall
    and per slice, and of the ranking metrics over users); a real server of the candidate
    answers with its offline scores within a p99 budget."""
    from shopguide.gate import gate_step

    p = load_params(params)
    registry = registry or p.registry.path
    result = gate_step(
        evaluation, training_set, ranking_set, registry, decision, p, model_dir, repo
    )
    if not result["passed"]:
        failed = [
            r for r, c in zip(result["reasons"], result["checks"], strict=True) if not c["passed"]
        ]
        raise GateRefused(f"gate refused the candidate (see {decision}): " + "; ".join(failed))


@app.command()
@step
def promote(
    model_dir: Path = CANDIDATE,
    decision: Path = DECISION,
    evaluation: Path = EVALUATION,
    training_set: Path = TRAINING_SET,
    parent: Annotated[
        Path | None,
        typer.Option(help="fine-tuning parent; default: the base model finetune's metrics name"),
    ] = None,
    finetune_metrics: Path = Path("metrics/finetune.json"),
    out: Path = Path("artifacts/gate/promotion.json"),
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Register a gate-approved model as champion and render its InferenceService."""
    from shopguide.io import read_json
    from shopguide.promote import promote_step

    p = load_params(params)
    if parent is None:
        recorded = read_json(finetune_metrics) if finetune_metrics.is_file() else {}
        parent = Path(recorded.get("base_model", PRETRAINED))
    record = promote_step(model_dir, decision, evaluation, training_set, out, p, parent)
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
    host: Annotated[str | None, typer.Option(help="bind address; default serving.host")] = None,
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Start the KServe model server (v1 predict, v2 infer, /metrics).

    POST /v1/models/<name>:predict (rankings), POST /v2/models/<name>/infer (Open Inference
    Protocol), GET /metrics (Prometheus). Serving a registry, it switches to a newly promoted
    champion without dropping requests."""
    from shopguide.serving.server import serve as run_server

    p = load_params(params)
    run_server(
        p.serving,
        repo or p.features.repo,
        model_dir,
        None if model_dir else (registry or p.registry.path),
        p.serving.http_port if http_port is None else http_port,
        host,
    )


dataset_app = typer.Typer(
    no_args_is_help=True,
    help="Declared datasets (datasets/<name>.yaml): check, train, generate Feast features, serve.",
)
app.add_typer(dataset_app, name="dataset")
SchemaArg = Annotated[Path, typer.Argument(help="the dataset schema, e.g. datasets/olist.yaml")]
RootOpt = Annotated[
    Path | None, typer.Option(help="folder of the tables; default the schema's root")
]


DatasetRegistryOpt = Annotated[Path, typer.Option(help="the dataset's registry")]
DATASET_REGISTRY = Path("registry/datasets")
DATASET_MODEL = Path("artifacts/datasets/model")
DATASET_DECISION = Path("artifacts/datasets/gate_decision.json")
DATASET_EXAMPLES = Path("artifacts/datasets/examples.parquet")
ExamplesOpt = Annotated[Path, typer.Option(help="the example table the training wrote")]
DATASET_REPO = Path("artifacts/datasets/feature_repo")


@dataset_app.command("check")
@step
def dataset_check(
    schema: SchemaArg,
    root: RootOpt = None,
    report_dir: Path = Path("reports/datasets"),
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Validate the schema, its tables (one Great Expectations suite each, derived from the
    declared columns), the point-in-time example table it builds and each declared column's
    drift against the last accepted run (validation.max_drift_psi)."""
    from shopguide.dataset.steps import check_step

    check_step(schema, load_params(params), report_dir, root)


@dataset_app.command("train")
@step
def dataset_train(
    schema: SchemaArg,
    root: RootOpt = None,
    model_dir: Path = DATASET_MODEL,
    metrics: Path = Path("metrics/dataset_train.json"),
    history: Path = Path("plots/dataset_train_history.csv"),
    report_dir: Path = Path("reports/datasets"),
    examples: ExamplesOpt = DATASET_EXAMPLES,
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Check the dataset, train the model of params.yaml on every declared task (binary,
    regression, multiclass), and report each task on the test split with intervals."""
    from shopguide.dataset.steps import train_step

    p = load_params(params)
    train_step(schema, p, model_dir, metrics, history, report_dir, examples, root)


@dataset_app.command("features")
@step
def dataset_features(
    schema: SchemaArg,
    repo: Annotated[Path, typer.Option(help="the Feast repo to generate")] = DATASET_REPO,
    root: RootOpt = None,
    report_dir: Path = Path("reports/datasets"),
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Check the dataset, then generate its Feast repo from the schema (an entity and view
    per lookup table and per history key, a feature service), `feast apply` it and write the
    latest values into the online store (SQLite unless the repo's feature_store.yaml says)."""
    from shopguide.dataset.steps import features_step

    features_step(schema, load_params(params), repo, report_dir, root)


@dataset_app.command("gate")
@step
def dataset_gate(
    model_dir: Path = DATASET_MODEL,
    registry: DatasetRegistryOpt = DATASET_REGISTRY,
    decision: Path = DATASET_DECISION,
    examples: ExamplesOpt = DATASET_EXAMPLES,
    root: RootOpt = None,
    repo: Annotated[
        Path, typer.Option(help="the dataset's Feast repo, for the serving check")
    ] = DATASET_REPO,
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Judge a declared dataset's model on the test split of the examples its training wrote:
    every served task beats the trivial guess and, paired bootstrap, does not regress against
    the registry's champion; served by a real server (`dataset features` first), it answers as
    offline. Exit code 3 when refused (the decision names each failed check)."""
    from shopguide.dataset.gate import gate_step

    p = load_params(params)
    outcome = gate_step(model_dir, examples, registry, decision, p, root, repo)
    if not outcome["passed"]:
        failed = [
            r for r, c in zip(outcome["reasons"], outcome["checks"], strict=True) if not c["passed"]
        ]
        raise GateRefused(f"gate refused the candidate (see {decision}): " + "; ".join(failed))


@dataset_app.command("promote")
@step
def dataset_promote(
    model_dir: Path = DATASET_MODEL,
    registry: DatasetRegistryOpt = DATASET_REGISTRY,
    decision: Path = DATASET_DECISION,
    metrics: Path = Path("metrics/dataset_train.json"),
    out: Path = Path("artifacts/datasets/promotion.json"),
) -> None:
    """Register the gate-approved model as the registry's champion (`dataset serve
    --registry` serves it)."""
    from shopguide.dataset.gate import promote_step

    promote_step(model_dir, decision, metrics, registry, out)


@dataset_app.command("serve")
@step
def dataset_serve(
    repo: Annotated[Path, typer.Option(help="the dataset's Feast repo")] = DATASET_REPO,
    model_dir: Annotated[Path | None, typer.Option(help="serve this model directory")] = (
        DATASET_MODEL
    ),
    registry: Annotated[Path | None, typer.Option(help="serve its champion instead")] = None,
    http_port: Annotated[int | None, typer.Option(help="default serving.http_port")] = None,
    host: Annotated[str | None, typer.Option(help="bind address; default serving.host")] = None,
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Serve a declared dataset's model: POST /v2/models/<dataset>/infer with one input per
    request-time field (the order's, its items', its payment's), one output per task; v1
    {"instances": [{field: value}]} too."""
    from shopguide.serving.declared import DeclaredPredictor
    from shopguide.serving.server import serve as run_server

    p = load_params(params)
    run_server(
        p.serving,
        repo,
        None if registry else model_dir,
        registry,
        p.serving.http_port if http_port is None else http_port,
        host,
        predictor=DeclaredPredictor,
    )


models_app = typer.Typer(
    no_args_is_help=True, help="The model registry: list versions, show one, roll back."
)
app.add_typer(models_app, name="models")
RegistryOpt = Annotated[Path | None, typer.Option(help="default registry.path")]
JsonOpt = Annotated[bool, typer.Option("--json", help="machine-readable output")]


def _registry(registry: Path | None, params: Path) -> Path:
    return registry or load_params(params).registry.path


@models_app.command("list")
@step
def models_list(
    registry: RegistryOpt = None, as_json: JsonOpt = False, params: ParamsOpt = Path("params.yaml")
) -> None:
    """Every version, oldest first, with its lineage and test AUC; * marks the champion."""
    import json

    from rich.console import Console
    from rich.table import Table

    from shopguide.registry import champion, versions

    root = _registry(registry, params)
    current = champion(root)
    rows = []
    for v in versions(root):
        meta = v.metadata
        rows.append(
            {
                "version": v.name,
                "champion": current is not None and v.name == current.name,
                "registered_at": meta.get("registered_at"),
                "model": meta.get("model"),
                "mean_test_auc": (meta.get("metrics") or {}).get("mean_auc"),
                "gate_passed": (meta.get("gate") or {}).get("passed"),
                "git_commit": meta.get("git_commit"),
                "parent_version": meta.get("parent_version"),
                "training_set": (meta.get("data_fingerprint") or {}).get("training_set"),
            }
        )
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        typer.echo(f"{root}: no versions registered")
        return
    table = Table(title=f"models in {root}")
    for column in ("", "version", "registered", "model", "test AUC", "gate", "commit", "parent"):
        table.add_column(column)
    for r in rows:
        auc = r["mean_test_auc"]
        table.add_row(
            "*" if r["champion"] else "",
            r["version"],
            (r["registered_at"] or "")[:16].replace("T", " "),
            r["model"] or "",
            f"{auc:.4f}" if isinstance(auc, float) else "",
            {True: "passed", False: "refused"}.get(r["gate_passed"], ""),
            (r["git_commit"] or "")[:10],
            r["parent_version"] or "",
        )
    Console().print(table)


@models_app.command("show")
@step
def models_show(
    version: Annotated[str, typer.Argument(help="a version, e.g. v0003, or 'champion'")],
    registry: RegistryOpt = None,
    as_json: JsonOpt = False,
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """A version's model card (Markdown), or with --json its full metadata."""
    import json

    from shopguide.registry import MODEL_CARD, champion, find_version

    root = _registry(registry, params)
    if version == "champion":
        found = champion(root)
        if found is None:
            raise ShopguideError(f"{root}: no champion yet")
    else:
        found = find_version(root, version)
    if as_json:
        typer.echo(json.dumps(found.metadata, indent=2, default=str))
    elif (found.path / MODEL_CARD).is_file():
        typer.echo((found.path / MODEL_CARD).read_text())
    else:
        from shopguide.model_card import render_model_card

        config = json.loads((found.path / "config.json").read_text())
        typer.echo(render_model_card(found.metadata, config))


@models_app.command("rollback")
@step
def models_rollback(
    to: Annotated[str | None, typer.Option(help="this version; default: the previous")] = None,
    reason: Annotated[str | None, typer.Option(help="recorded in the history")] = None,
    deploy: Annotated[
        bool, typer.Option(help="also make the cluster's InferenceService serve it")
    ] = False,
    registry: RegistryOpt = None,
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Make an earlier version the champion again.

    Atomic, under the registry lock; servers polling the registry switch to it. With a params
    file, the InferenceService manifest (`deploy.output`) is rendered for it, as on promotion;
    with `--deploy` the cluster's InferenceService serves it, all traffic at once (kubeconfig
    or in-cluster account)."""
    from shopguide.deploy import deploy_version, render_inference_service
    from shopguide.registry import rollback

    p = load_params(params) if deploy or params.is_file() else None
    old, new = rollback(_registry(registry, params), to, reason)
    typer.echo(f"champion: {old} -> {new}")
    if p is None:
        typer.echo(f"no {params}: InferenceService manifest not rendered")
        return
    manifest = render_inference_service(new, p.deploy, p.serving, p.deploy.output)
    typer.echo(f"InferenceService rendered at {manifest}")
    if deploy:
        typer.echo(deploy_version(new, p.deploy, p.serving, full_rollout=True))


pipeline_app = typer.Typer(
    no_args_is_help=True, help="Upload, run and schedule the pipelines on Kubeflow Pipelines."
)
app.add_typer(pipeline_app, name="pipeline")
PackageOpt = Annotated[
    Path, typer.Option("--package", help="compiled pipeline YAML (python -m pipelines.<name>)")
]
HostOpt = Annotated[str | None, typer.Option(help="KFP endpoint; default kubeflow.host")]
NamespaceOpt = Annotated[
    str | None,
    typer.Option(
        envvar="SHOPGUIDE_KFP_NAMESPACE",
        help="the Kubeflow profile namespace to work in; default kubeflow.namespace",
    ),
]
TokenOpt = Annotated[
    str | None,
    typer.Option(
        envvar="SHOPGUIDE_KFP_TOKEN",
        show_envvar=True,
        help="bearer token for a multi-user KFP (prefer the environment variable: an option "
        "shows in the process list); in a pod the projected token at "
        "KF_PIPELINES_SA_TOKEN_PATH is used",
    ),
]
CookieOpt = Annotated[
    str | None,
    typer.Option(
        envvar="SHOPGUIDE_KFP_COOKIE",
        show_envvar=True,
        help="Cookie header of a Kubeflow login session, e.g. 'oauth2_proxy_kubeflow=...'",
    ),
]
ArgOpt = Annotated[
    list[str] | None,
    typer.Option("--arg", help="pipeline argument NAME=VALUE (VALUE read as JSON if it parses)"),
]
TRAINING_PACKAGE = Path("pipelines/training_pipeline.yaml")


def _pipeline_arguments(pairs: list[str] | None) -> dict[str, object]:
    import json

    arguments: dict[str, object] = {}
    for pair in pairs or []:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise ShopguideError(f"--arg {pair!r}: expected NAME=VALUE")
        try:
            arguments[name] = json.loads(value)
        except json.JSONDecodeError:
            arguments[name] = value
    return arguments


def _kfp_client(params: Path, host: str | None, namespace: str | None, token, cookie):
    """The KFP settings (with `namespace` if given) and a client authenticated as
    `kfp_runs.resolve_auth` finds."""
    from shopguide import kfp_runs

    settings = load_params(params).kubeflow
    if namespace:
        settings = settings.model_copy(update={"namespace": namespace})
    auth = kfp_runs.resolve_auth(token, cookie)
    return settings, kfp_runs.connect(settings, host, auth)


@pipeline_app.command("upload")
@step
def pipeline_upload(
    package: PackageOpt = TRAINING_PACKAGE,
    host: HostOpt = None,
    namespace: NamespaceOpt = None,
    token: TokenOpt = None,
    cookie: CookieOpt = None,
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Upload the compiled pipeline, as a new version when it exists already."""
    from shopguide import kfp_runs

    _, client = _kfp_client(params, host, namespace, token, cookie)
    kfp_runs.upload(client, package)


@pipeline_app.command("run")
@step
def pipeline_run(
    package: PackageOpt = TRAINING_PACKAGE,
    arg: ArgOpt = None,
    host: HostOpt = None,
    namespace: NamespaceOpt = None,
    token: TokenOpt = None,
    cookie: CookieOpt = None,
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Start one run of the uploaded pipeline's latest version (what the CronJob calls)."""
    from shopguide import kfp_runs

    name, arguments = kfp_runs.pipeline_name(package), _pipeline_arguments(arg)
    settings, client = _kfp_client(params, host, namespace, token, cookie)
    kfp_runs.run(client, settings, name, arguments)


@pipeline_app.command("schedule")
@step
def pipeline_schedule(
    package: PackageOpt = TRAINING_PACKAGE,
    cron: Annotated[
        str | None, typer.Option(help="KFP cron, seconds first; default kubeflow.schedule_cron")
    ] = None,
    pin: Annotated[
        bool,
        typer.Option(help="run the version latest now, not each run's latest (KFP before 2.5)"),
    ] = False,
    arg: ArgOpt = None,
    host: HostOpt = None,
    namespace: NamespaceOpt = None,
    token: TokenOpt = None,
    cookie: CookieOpt = None,
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Retrain on a schedule: a recurring run of the latest version, one at a time, no catch-up."""
    from shopguide import kfp_runs

    name, arguments = kfp_runs.pipeline_name(package), _pipeline_arguments(arg)
    settings, client = _kfp_client(params, host, namespace, token, cookie)
    kfp_runs.schedule(client, settings, name, arguments, cron or settings.schedule_cron, pin=pin)


cluster_app = typer.Typer(
    no_args_is_help=True,
    help="The Kubernetes cluster of the cluster path: check what it needs, seed the data volume.",
)
app.add_typer(cluster_app, name="cluster")


@cluster_app.command("check")
@step
def cluster_check(
    namespace: Annotated[
        str | None, typer.Option(help="the profile namespace; default deploy.namespace")
    ] = None,
    kubeconfig: Annotated[
        str | None, typer.Option(envvar="KUBECONFIG", help="default ~/.kube/config")
    ] = None,
    context: Annotated[str | None, typer.Option(help="kubeconfig context")] = None,
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Read the live cluster (kubeconfig) and report what the cluster path lacks: CRDs, KServe's
    mode and Knative's config-features, the profile, ClusterRoles, storage, GPU nodes, the
    overlay. Reads only; exit code 2 when something is missing."""
    from shopguide.cluster import check_cluster, connect

    p = load_params(params)
    namespace = namespace or p.deploy.namespace
    findings = check_cluster(connect(kubeconfig, context), p, namespace)
    for finding in findings:
        typer.echo(finding.line())
    missing = [f.check for f in findings if f.status == "missing"]
    if missing:
        raise ShopguideError(f"the cluster lacks {len(missing)}: {', '.join(missing)}")
    typer.echo(f"nothing missing for namespace {namespace}")


@cluster_app.command("seed")
@step
def cluster_seed(
    data_mount: Annotated[
        Path, typer.Option(help="where the data volume is mounted (deploy.data_mount)")
    ] = Path("/mnt/shopguide"),
    template: Annotated[
        Path, typer.Option(help="Feast repo whose definitions (*.py) to copy")
    ] = Path("feature_repo"),
) -> None:
    """Lay out the data volume (raw/, feature_repo/, registry/, validation/; group-writable,
    setgid) and copy the Feast definitions in; what k8s/jobs/seed/seed.yaml runs."""
    from shopguide.volume import seed_volume

    seed_volume(data_mount, template)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
