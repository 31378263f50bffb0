"""Component of the `gate` step (as `shopguide gate`)."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Markdown, Model, Output

from components.settings import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def gate(
    evaluation: Input[Artifact],
    training_set: Input[Dataset],
    ranking_set: Input[Dataset],
    model: Input[Model],
    feature_repo: str,
    registry: str,
    params_json: str,
    decision: Output[Artifact],
    summary: Output[Markdown],
) -> str:
    """Pass or refuse the candidate `model` against the floors and the champion in `registry`.

    The candidate is served from `feature_repo`'s online store for the infrastructure check.

        `summary` is the checks as a Markdown table, which the KFP UI shows with the run. Returns
        "passed" or "refused" for the pipeline to branch on. Unlike the CLI, which exits 3,
        a refusal does not fail the task: it is an expected outcome with its own branch.
    """
    from pathlib import Path

    from shopguide.logs import setup_logging

    setup_logging()
    from shopguide.config import params_from_json
    from shopguide.gate import gate_step, gate_verdict

    result = gate_step(
        Path(evaluation.path),
        Path(training_set.path),
        Path(ranking_set.path),
        Path(registry),
        Path(decision.path),
        params_from_json(params_json),
        model_dir=Path(model.path),
        feature_repo=Path(feature_repo),
    )
    return gate_verdict(result, Path(summary.path))
