"""Component of the `features` step (as `shopguide features`)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from components.settings import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def features(
    events: Input[Dataset],
    exposures: Input[Dataset],
    queries: Input[Dataset],
    feature_repo: str,
    params_json: str,
    training_set: Output[Dataset],
    ranking_set: Output[Dataset],
) -> None:
    """Feature tables, `feast apply`, point-in-time training and ranking sets, online
    materialization.

    `feature_repo` is a path, not an artifact: the step writes the Feast offline data, registry
    and online store into that repo, which the serving side reads, so it must be storage shared
    with serving (a volume in the cluster).
    """
    from pathlib import Path

    from shopguide.logs import setup_logging

    setup_logging()
    from shopguide.config import params_from_json
    from shopguide.features import build_features

    summary = build_features(
        Path(events.path),
        Path(exposures.path),
        Path(queries.path),
        Path(feature_repo),
        Path(training_set.path),
        Path(ranking_set.path),
        params_from_json(params_json),
    )
    training_set.metadata.update(summary)
