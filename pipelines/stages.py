"""The stages both pipelines share: data to a validated training set, and gate to promotion.

Called inside a `@dsl.pipeline` function; every task goes through `on_cluster`.

Caching (KFP reuses a task's outputs when its component, image, parameter values and input
artifacts are the same; shopguide.caching): a step is cached only when its inputs are all it
reads, so the same inputs mean the same data. The path parameters' data is fingerprinted every
run (`fingerprint-inputs`) and passed on as parameters, so on an unchanged re-run ingest,
features, the training-set check, train, finetune and evaluate all come from the cache, and a
raw file replaced at the same path runs them again. Uncached, because they read or write state
outside their inputs: the fingerprints, validate-events (the accepted drift profile on the
volume), the Feast repo's sync, the gate (the registry's champion), promote and deploy.
"""

from __future__ import annotations

from kfp import dsl
from kfp.dsl.pipeline_channel import PipelineChannel

from components.evaluate import evaluate, evaluated_tasks, task_plots
from components.features import features, sync_feature_repo
from components.fingerprint import fingerprint_inputs
from components.gate import gate
from components.ingest import ingest
from components.promote import deploy_champion, promote, report_refusal
from components.validate import validate
from pipelines.cluster import PARAMS, on_cluster, uncached

# Defaults for the path parameters: locations on the data volume every task mounts.
RAW_PATH = f"{PARAMS.deploy.data_mount}/raw/UserBehavior.csv"
FEATURE_REPO = f"{PARAMS.deploy.data_mount}/feature_repo"
REGISTRY = f"{PARAMS.deploy.data_mount}/registry"
# The accepted event profile between runs (the drift check's reference).
VALIDATION_DIR = f"{PARAMS.deploy.data_mount}/validation"


def training_set(
    raw_path: str, feature_repo: str, validation_dir: str, params_json: str
) -> tuple[PipelineChannel, PipelineChannel, dsl.PipelineTask]:
    """Fingerprint the inputs, ingest, validate the events (drift against the profile accepted
    in `validation_dir`), build features (Feast) and make sure the shared Feast repo holds them,
    validate the training set.

    Returns the training set, the ranking set (taobao-rank-v1's query candidates with their
    features) and the training set's validation task, which training must run after.
    """
    fingerprints = uncached(fingerprint_inputs(raw_path=raw_path, feature_repo=feature_repo))
    ingested = on_cluster(
        ingest(
            raw_path=raw_path,
            params_json=params_json,
            raw_fingerprint=fingerprints.outputs["raw"],
        ),
        retry=True,
    )
    # Reads the accepted event profile from `validation_dir` and replaces it on success: state
    # no cache key sees.
    events_checked = uncached(
        validate(
            suite="events",
            table=ingested.outputs["events"],
            params_json=params_json,
            profile_dir=validation_dir,
        )
    ).set_display_name("validate-events")
    featured = on_cluster(
        features(
            events=ingested.outputs["events"],
            exposures=ingested.outputs["exposures"],
            queries=ingested.outputs["queries"],
            feature_repo=feature_repo,
            params_json=params_json,
            repo_fingerprint=fingerprints.outputs["feature_repo"],
        ).after(events_checked),
        retry=True,
    )
    # A cached features step wrote the repo in an earlier run, and another run may have
    # rewritten it since: rebuild it then, before anything reads it.
    synced = uncached(
        sync_feature_repo(
            events=ingested.outputs["events"],
            exposures=ingested.outputs["exposures"],
            queries=ingested.outputs["queries"],
            training_set=featured.outputs["training_set"],
            feature_repo=feature_repo,
            params_json=params_json,
        ),
        retry=True,
    )
    checked = on_cluster(
        validate(
            suite="training-set", table=featured.outputs["training_set"], params_json=params_json
        ).after(synced)
    ).set_display_name("validate-training-set")
    return featured.outputs["training_set"], featured.outputs["ranking_set"], checked


def gate_and_promote(
    candidate: PipelineChannel,
    pretrained: PipelineChannel,
    data: PipelineChannel,
    ranking: PipelineChannel,
    raw_path: str,
    feature_repo: str,
    registry: str,
    params_json: str,
    deploy: bool,
) -> dsl.OneOf:
    """Evaluate the candidate, gate it against the champion, then promote it or record why not.

    The output is "promoted <version>" or "refused: <failed checks>", whichever branch ran.
    """
    evaluated = on_cluster(
        evaluate(training_set=data, ranking_set=ranking, model=candidate, params_json=params_json)
    )
    # One ClassificationMetrics per task (ROC curve and confusion matrix), which the UI plots.
    tasks = on_cluster(evaluated_tasks(evaluation=evaluated.outputs["evaluation"]))
    with dsl.ParallelFor(tasks.output, name="plot-tasks") as task:
        on_cluster(
            task_plots(
                task=task,
                evaluation=evaluated.outputs["evaluation"],
                roc=evaluated.outputs["roc"],
            )
        )
    # The decision depends on the registry's current champion, not only on the inputs.
    decided = uncached(
        gate(
            evaluation=evaluated.outputs["evaluation"],
            training_set=data,
            ranking_set=ranking,
            model=candidate,
            feature_repo=feature_repo,
            registry=registry,
            params_json=params_json,
        )
    )
    with dsl.If(decided.outputs["Output"] == "passed", name="gate-passed"):
        promoted = uncached(
            promote(
                model=candidate,
                pretrained=pretrained,
                decision=decided.outputs["decision"],
                evaluation=evaluated.outputs["evaluation"],
                training_set=data,
                raw_path=raw_path,
                registry=registry,
                params_json=params_json,
            )
        )
        with dsl.If(deploy == True, name="deploy"):  # noqa: E712 - a pipeline condition
            uncached(
                deploy_champion(promotion=promoted.outputs["promotion"], params_json=params_json),
                retry=True,
            )
    with dsl.Else(name="gate-refused"):
        refused = on_cluster(report_refusal(decision=decided.outputs["decision"]))
    return dsl.OneOf(promoted.outputs["Output"], refused.outputs["Output"])
