"""Component of the `dataset gate` step."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Markdown, Model, Output

from components.settings import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def dataset_gate(
    model: Input[Model],
    examples: Input[Dataset],
    root: str,
    feature_repo: str,
    registry: str,
    params_json: str,
    decision: Output[Artifact],
    summary: Output[Markdown],
) -> str:
    """Pass or refuse the candidate `model` against the floors and `registry`'s champion,
    and behind a real server reading `feature_repo` (`gate.infra`). Returns "passed" or
    "refused" for the pipeline to branch on; a refusal does not fail the task."""
    from pathlib import Path

    from shopguide.logs import setup_logging

    setup_logging()
    from shopguide.config import params_from_json
    from shopguide.dataset.gate import gate_step
    from shopguide.gate import gate_verdict

    result = gate_step(
        Path(model.path),
        Path(examples.path),
        Path(registry),
        Path(decision.path),
        params_from_json(params_json),
        Path(root) if root else None,
        Path(feature_repo),
    )
    return gate_verdict(result, Path(summary.path))
