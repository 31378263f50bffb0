"""The shopguide training pipeline for Kubeflow Pipelines v2, the same DAG as `dvc.yaml`.

`python -m pipelines.training_pipeline` compiles it to `pipelines/training_pipeline.yaml`, the
file to upload; a test fails when that file is stale.
"""

from pathlib import Path

from kfp import compiler, dsl

from components.evaluate import evaluate
from components.features import features
from components.finetune import finetune
from components.gate import gate
from components.ingest import ingest
from components.promote import promote, report_refusal
from components.train import train
from components.validate import validate
from shopguide.config import load_params

ROOT = Path(__file__).resolve().parents[1]
COMPILED = ROOT / "pipelines" / "training_pipeline.yaml"
# The repo's params.yaml as the default settings. Its paths are relative and the path-like
# settings that matter are overridden by pipeline parameters, so the compiled file does not
# depend on the machine it was compiled on.
DEFAULT_PARAMS_JSON = load_params(ROOT / "params.yaml").model_dump_json()


@dsl.pipeline(
    name="shopguide-training",
    description="Ingest, validate, build features, train, fine-tune, evaluate and gate a "
    "shopguide MMoE; promote it to champion only when the gate passes.",
)
def training_pipeline(
    raw_path: str, feature_repo: str, registry: str, params_json: str = DEFAULT_PARAMS_JSON
) -> str:
    """Returns "promoted <version>" or "refused: <failed checks>", whichever branch ran.

    `raw_path`, `feature_repo` and `registry` are paths on storage every task mounts: the raw
    CSV, the Feast repo (serving reads its online store) and the model registry.
    """
    ingested = ingest(raw_path=raw_path, params_json=params_json)
    events_checked = validate(
        suite="events", table=ingested.outputs["events"], params_json=params_json
    ).set_display_name("validate-events")
    featured = (
        features(
            events=ingested.outputs["events"],
            exposures=ingested.outputs["exposures"],
            feature_repo=feature_repo,
            params_json=params_json,
        )
        .after(events_checked)
        # Writes the Feast repo, which a cache hit would leave stale.
        .set_caching_options(enable_caching=False)
    )
    training_set = featured.outputs["training_set"]
    training_set_checked = validate(
        suite="training-set", table=training_set, params_json=params_json
    ).set_display_name("validate-training-set")
    trained = train(training_set=training_set, params_json=params_json).after(training_set_checked)
    tuned = finetune(
        training_set=training_set, pretrained=trained.outputs["model"], params_json=params_json
    )
    evaluated = evaluate(
        training_set=training_set, model=tuned.outputs["model"], params_json=params_json
    )
    # The decision depends on the registry's current champion, not only on the inputs.
    decided = gate(
        evaluation=evaluated.outputs["evaluation"],
        training_set=training_set,
        registry=registry,
        params_json=params_json,
    ).set_caching_options(enable_caching=False)
    with dsl.If(decided.outputs["Output"] == "passed", name="gate-passed"):
        promoted = promote(
            model=tuned.outputs["model"],
            pretrained=trained.outputs["model"],
            decision=decided.outputs["decision"],
            evaluation=evaluated.outputs["evaluation"],
            training_set=training_set,
            raw_path=raw_path,
            registry=registry,
            params_json=params_json,
        ).set_caching_options(enable_caching=False)
    with dsl.Else(name="gate-refused"):
        refused = report_refusal(decision=decided.outputs["decision"])
    return dsl.OneOf(promoted.outputs["Output"], refused.outputs["Output"])


def compile_pipeline(path: Path = COMPILED) -> Path:
    compiler.Compiler().compile(training_pipeline, str(path))
    return path


if __name__ == "__main__":
    print(compile_pipeline())
