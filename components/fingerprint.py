"""Component that fingerprints the pipeline's path inputs, so that caching keys on their data."""

from typing import NamedTuple

from kfp import dsl

from components.settings import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def fingerprint_inputs(raw_path: str, feature_repo: str) -> NamedTuple(
    "Fingerprints", raw=str, feature_repo=str
):
    """sha256 of the raw data and of the Feast definitions and configuration.

    Run every time (never from the cache): a file replaced at the same path gets a new
    fingerprint, and the steps that take it as a parameter run again; unchanged data keeps
    their cache keys, so they and everything downstream hit.
    """
    from collections import namedtuple
    from pathlib import Path

    from shopguide.logs import setup_logging

    setup_logging()
    from shopguide.caching import feature_repo_fingerprint, raw_fingerprint

    fingerprints = namedtuple("Fingerprints", ["raw", "feature_repo"])
    return fingerprints(
        raw_fingerprint(Path(raw_path)), feature_repo_fingerprint(Path(feature_repo))
    )
