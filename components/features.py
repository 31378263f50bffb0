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
    repo_fingerprint: str = "",
) -> None:
    """Feature tables, `feast apply`, point-in-time training and ranking sets, online
    materialization.

    `feature_repo` is a path, not an artifact: the step writes the Feast offline data, registry
    and online store into that repo, which the serving side reads, so it must be storage shared
    with serving (a volume in the cluster). `repo_fingerprint` (its definitions and config, from
    `fingerprint_inputs`) keys the cache on them. The repo is marked with the training set it
    built; after a cache hit, `sync_feature_repo` rebuilds it if another run has changed it.
    """
    from pathlib import Path

    from shopguide.logs import setup_logging

    setup_logging()
    from shopguide.caching import clear_feature_repo_mark, mark_feature_repo
    from shopguide.config import params_from_json
    from shopguide.features import build_features

    clear_feature_repo_mark(Path(feature_repo))
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
    training_set.metadata["feature_repo_fingerprint"] = repo_fingerprint
    mark_feature_repo(Path(feature_repo), training_set.uri)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def sync_feature_repo(
    events: Input[Dataset],
    exposures: Input[Dataset],
    queries: Input[Dataset],
    training_set: Input[Dataset],
    feature_repo: str,
    params_json: str,
) -> str:
    """Make the shared Feast repo hold the data of `training_set`, which serving and the gate's
    serving check read: nothing to do after the features step ran ("current"); after it came
    from the cache, rebuild the repo from the same events if another run wrote it since
    ("rebuilt"; the training and ranking sets it rebuilds on the way are thrown away, the
    step's outputs stand). Never cached.
    """
    import logging
    import tempfile
    from pathlib import Path

    from shopguide.logs import setup_logging

    setup_logging()
    from shopguide.caching import clear_feature_repo_mark, feature_repo_holds, mark_feature_repo
    from shopguide.config import params_from_json
    from shopguide.features import build_features

    repo = Path(feature_repo)
    if feature_repo_holds(repo, training_set.uri):
        return "current"
    logging.getLogger("shopguide").warning(
        "%s holds another run's features; rebuilding it for %s", repo, training_set.uri
    )
    clear_feature_repo_mark(repo)
    with tempfile.TemporaryDirectory() as tmp:
        build_features(
            Path(events.path),
            Path(exposures.path),
            Path(queries.path),
            repo,
            Path(tmp) / "training_set.parquet",
            Path(tmp) / "ranking_set.parquet",
            params_from_json(params_json),
        )
    mark_feature_repo(repo, training_set.uri)
    return "rebuilt"
