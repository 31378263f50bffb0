"""A declared dataset's pipeline for Kubeflow Pipelines v2, the same DAG as
`datasets/dvc.yaml`: train (its checks included), the generated Feast repo, the gate (its
serving check reads that repo) and promotion or the refusal's record.

`python -m pipelines.dataset_pipeline` compiles it to `pipelines/dataset_pipeline.yaml`; a
test fails when that file is stale. No task is cached: each reads the schema file and the
tables by path, which no cache key sees, and the gate and promotion read the registry.
"""

from kfp import dsl

from components.dataset.features import dataset_features
from components.dataset.gate import dataset_gate
from components.dataset.promote import dataset_promote
from components.dataset.train import dataset_train
from components.promote import report_refusal
from pipelines.cluster import PARAMS, ROOT, compile_pipeline, uncached

COMPILED = ROOT / "pipelines" / "dataset_pipeline.yaml"
DATA = PARAMS.deploy.data_mount
# Settings of the event-log pipeline's defaults; a dataset's own params file, as JSON, replaces
# them (`shopguide.config.load_params(...).model_dump_json()`).
DEFAULT_PARAMS_JSON = PARAMS.model_dump_json()


@dsl.pipeline(
    name="shopguide-dataset",
    description="Train a declared dataset's model from its schema, generate and fill its Feast "
    "repo, gate the model (served from that repo) and promote it only when the gate passes.",
)
def dataset_pipeline(
    schema_path: str = f"{DATA}/datasets/olist_review.yaml",
    root: str = f"{DATA}/raw/olist",
    feature_repo: str = f"{DATA}/datasets/olist_review/feature_repo",
    registry: str = f"{DATA}/registry/datasets/olist_review",
    params_json: str = DEFAULT_PARAMS_JSON,
) -> str:
    """Returns "promoted <version>" or "refused: <failed checks>", whichever branch ran.

    Paths on the data volume every task mounts: the schema file, its tables' folder (`root`;
    empty: the schema's own), the Feast repo the server reads and the dataset's registry.
    """
    trained = uncached(dataset_train(schema_path=schema_path, root=root, params_json=params_json))
    featured = uncached(
        dataset_features(
            schema_path=schema_path, root=root, feature_repo=feature_repo, params_json=params_json
        )
    )
    decided = uncached(
        dataset_gate(
            model=trained.outputs["model"],
            examples=trained.outputs["examples"],
            root=root,
            feature_repo=featured.outputs["Output"],
            registry=registry,
            params_json=params_json,
        )
    )
    with dsl.If(decided.outputs["Output"] == "passed", name="gate-passed"):
        promoted = uncached(
            dataset_promote(
                model=trained.outputs["model"],
                decision=decided.outputs["decision"],
                metrics=trained.outputs["metrics"],
                registry=registry,
            )
        )
    with dsl.Else(name="gate-refused"):
        refused = uncached(report_refusal(decision=decided.outputs["decision"]))
    return dsl.OneOf(promoted.outputs["Output"], refused.outputs["Output"])


if __name__ == "__main__":
    print(compile_pipeline(dataset_pipeline, COMPILED))
