"""Component of the `dataset promote` step."""

from kfp import dsl
from kfp.dsl import Artifact, Input, Model, Output

from components.settings import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def dataset_promote(
    model: Input[Model],
    decision: Input[Artifact],
    metrics: Input[Artifact],
    registry: str,
    promotion: Output[Artifact],
) -> str:
    """Register the gate-approved `model` as `registry`'s champion (a server started with
    `dataset serve --registry` swaps it in). Returns "promoted <version>"."""
    from pathlib import Path

    from shopguide.logs import setup_logging

    setup_logging()
    from shopguide.dataset.gate import promote_step

    record = promote_step(
        Path(model.path),
        Path(decision.path),
        Path(metrics.path),
        Path(registry),
        Path(promotion.path),
    )
    return f"promoted {record['version']}"
