"""Component of the `dataset features` step."""

from kfp import dsl
from kfp.dsl import Artifact, Output

from components.settings import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def dataset_features(
    schema_path: str, root: str, feature_repo: str, params_json: str, reports: Output[Artifact]
) -> str:
    """Generate the dataset's Feast repo at `feature_repo` (a path the server reads too),
    `feast apply` it and write every key's latest values to the online store. Returns the
    repo's path."""
    from pathlib import Path

    from shopguide.logs import setup_logging

    setup_logging()
    from shopguide.config import params_from_json
    from shopguide.dataset.steps import features_step

    reports_dir = Path(reports.path)
    reports_dir.mkdir(parents=True, exist_ok=True)
    features_step(
        Path(schema_path),
        params_from_json(params_json),
        Path(feature_repo),
        reports_dir,
        Path(root) if root else None,
    )
    return feature_repo
