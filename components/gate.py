"""Component of the `gate` step (as `shopguide gate`)."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Output

from components.settings import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def gate(
    evaluation: Input[Artifact],
    training_set: Input[Dataset],
    registry: str,
    params_json: str,
    decision: Output[Artifact],
) -> str:
    """Pass or refuse the candidate against the AUC floors and the champion in `registry`.

    Returns "passed" or "refused" for the pipeline to branch on. Unlike the CLI, which exits 3,
    a refusal does not fail the task: it is an expected outcome with its own branch.
    """
    from pathlib import Path

    from shopguide.logs import setup_logging

    setup_logging()
    from shopguide.config import params_from_json
    from shopguide.gate import gate_step

    result = gate_step(
        Path(evaluation.path),
        Path(training_set.path),
        Path(registry),
        Path(decision.path),
        params_from_json(params_json),
    )
    return "passed" if result["passed"] else "refused"
