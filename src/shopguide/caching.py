"""What KFP caching needs to be correct: content fingerprints of the inputs that are paths, and
a mark of which training set the shared Feast repo holds.

KFP reuses a step's outputs when its cache key matches: the component, its image, its input
parameters' values and its input artifacts' identities. A path parameter (the raw CSV, the Feast
repo on the volume) says nothing about the data behind it, so the pipeline passes each path's
content fingerprint as a parameter too (an uncached step computes them every run): the same
data gives the same key, changed data a new one. Artifacts a cached step returns are the ones
it made, so the steps downstream hit as well.

The features step also writes the Feast repo (offline sources, registry, online store), which
serving reads; a cache hit skips that write, and another run may have rewritten the repo since.
So the step marks the repo with the training set it built, and an uncached check after it
rebuilds the repo when the mark names another one.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from shopguide.errors import ShopguideError
from shopguide.io import fingerprint

REPO_MARK = "data/.shopguide-training-set"
# Feast's `feast.constants.FEAST_FS_YAML_FILE_PATH_ENV_NAME`, spelt out: importing Feast costs
# seconds, and the fingerprint step that runs on every pipeline run needs nothing else from it.
FEAST_FS_YAML_FILE_PATH_ENV_NAME = "FEAST_FS_YAML_FILE_PATH"


def raw_fingerprint(path: Path) -> str:
    """sha256 of the raw data file (or of every file under a directory)."""
    path = Path(path)
    if not path.exists():
        raise ShopguideError(f"{path}: no raw data there")
    return "sha256:" + fingerprint(path)


def feature_repo_fingerprint(repo: Path) -> str:
    """sha256 of what defines the features: the repo's Python definitions and the Feast
    configuration in effect (FEAST_FS_YAML_FILE_PATH's file, else the repo's own), not the data
    the features step writes into the repo."""
    repo = Path(repo)
    named = os.environ.get(FEAST_FS_YAML_FILE_PATH_ENV_NAME)
    config = Path(named) if named else repo / "feature_store.yaml"
    sources = sorted(repo.glob("*.py"))
    if not sources or not config.is_file():
        raise ShopguideError(f"{repo}: no Feast definitions or configuration ({config}) there")
    digest = hashlib.sha256()
    for source in [*sources, config]:
        digest.update(source.name.encode() + b"\0" + source.read_bytes() + b"\0")
    return "sha256:" + digest.hexdigest()


def mark_feature_repo(repo: Path, training_set: str) -> None:
    """Record that `repo`'s data is the one that built `training_set` (an artifact's URI)."""
    mark = Path(repo) / REPO_MARK
    mark.parent.mkdir(parents=True, exist_ok=True)
    tmp = mark.with_name(mark.name + ".tmp")
    tmp.write_text(training_set)
    tmp.replace(mark)


def clear_feature_repo_mark(repo: Path) -> None:
    """Before the repo is rewritten: a failed build must not leave a mark that vouches for it."""
    (Path(repo) / REPO_MARK).unlink(missing_ok=True)


def feature_repo_holds(repo: Path, training_set: str) -> bool:
    mark = Path(repo) / REPO_MARK
    return mark.is_file() and mark.read_text() == training_set
