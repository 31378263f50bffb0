"""The stages both pipelines share: data to a validated training set, and gate to promotion.

Called inside a `@dsl.pipeline` function; every task goes through `on_cluster`.
"""

from __future__ import annotations

from kfp import dsl
from kfp.dsl.pipeline_channel import PipelineChannel

from components.evaluate import evaluate
from components.features import features
from components.gate import gate
from components.ingest import ingest
from components.promote import deploy_champion, promote, report_refusal
from components.validate import validate
from pipelines.cluster import PARAMS, on_cluster

# Defaults for the path parameters: locations on the data volume every task mounts.
RAW_PATH = f"{PARAMS.deploy.data_mount}/raw/UserBehavior.csv"
FEATURE_REPO = f"{PARAMS.deploy.data_mount}/feature_repo"
REGISTRY = f"{PARAMS.deploy.data_mount}/registry"
# The accepted event profile between runs (the drift check's reference).
VALIDATION_DIR = f"{PARAMS.deploy.data_mount}/validation"


def training_set(
    raw_path: str, feature_repo: str, validation_dir: str, params_json: str
) -> tuple[PipelineChannel, PipelineChannel, dsl.PipelineTask]:
    """Ingest, validate the events (drift against the profile accepted in `validation_dir`),
    build features (Feast), validate the training set.

    Returns the training set, the ranking set (taobao-rank-v1's query candidates with their
    features) and the training set's validation task, which training must run after.
    """
    ingested = on_cluster(ingest(raw_path=raw_path, params_json=params_json), retry=True)
    # The raw file's path is the cache key, not its contents: a scheduled run on a file
    # replaced at the same path must read it again.
    ingested.set_caching_options(False)
    events_checked = on_cluster(
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
        ).after(events_checked),
        retry=True,
    )
    # Writes the Feast repo, which a cache hit would leave stale.
    featured.set_caching_options(enable_caching=False)
    checked = on_cluster(
        validate(
            suite="training-set", table=featured.outputs["training_set"], params_json=params_json
        )
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
    # The decision depends on the registry's current champion, not only on the inputs.
    decided = on_cluster(
        gate(
            evaluation=evaluated.outputs["evaluation"],
            training_set=data,
            ranking_set=ranking,
            model=candidate,
            feature_repo=feature_repo,
            registry=registry,
            params_json=params_json,
        )
    ).set_caching_options(enable_caching=False)
    with dsl.If(decided.outputs["Output"] == "passed", name="gate-passed"):
        promoted = on_cluster(
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
        ).set_caching_options(enable_caching=False)
        with dsl.If(deploy == True, name="deploy"):  # noqa: E712 - a pipeline condition
            on_cluster(
                deploy_champion(promotion=promoted.outputs["promotion"], params_json=params_json),
                retry=True,
            ).set_caching_options(enable_caching=False)
    with dsl.Else(name="gate-refused"):
        refused = on_cluster(report_refusal(decision=decided.outputs["decision"]))
    return dsl.OneOf(promoted.outputs["Output"], refused.outputs["Output"])
