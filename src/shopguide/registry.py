"""Local model registry: immutable versions plus a champion pointer.

Layout::

    registry/
      versions/v0001/  model.safetensors, config.json, metadata.json
      champion.json    {"version": "v0001", ...}
      .lock

A version directory is staged under a temporary name and renamed into place, and the champion
pointer is replaced atomically, all under an exclusive file lock, so concurrent promotions never
leave a half-written version or a pointer to one.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from shopguide.errors import ShopguideError
from shopguide.io import write_json
from shopguide.model.store import CONFIG, WEIGHTS

CHAMPION = "champion.json"
METADATA = "metadata.json"
VERSION_NAME = re.compile(r"v\d{4,}")


@dataclass(frozen=True)
class Version:
    name: str
    path: Path

    @property
    def metadata(self) -> dict:
        return json.loads((self.path / METADATA).read_text())


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def versions(root: Path) -> list[Version]:
    """Registered versions, oldest first (by number: v10000 comes after v9999)."""
    base = Path(root) / "versions"
    if not base.is_dir():
        return []
    found = [
        p for p in base.iterdir() if VERSION_NAME.fullmatch(p.name) and (p / METADATA).is_file()
    ]
    return [Version(p.name, p) for p in sorted(found, key=lambda p: int(p.name[1:]))]


def version_name(model_dir: Path) -> str:
    """The registry name of a model directory, from its metadata.json: a copy mounted under
    another name (KServe's /mnt/models) still reports the version it was registered as."""
    try:
        name = json.loads((Path(model_dir) / METADATA).read_text()).get("version")
    except (OSError, ValueError, AttributeError):
        name = None
    return name if isinstance(name, str) and name else Path(model_dir).name


def champion(root: Path) -> Version | None:
    """The current champion; None before the first promotion."""
    pointer = Path(root) / CHAMPION
    if not pointer.is_file():
        return None
    try:
        name = json.loads(pointer.read_text())["version"]
    except (ValueError, KeyError, TypeError) as exc:  # bad UTF-8/JSON, no key, not an object
        raise ShopguideError(f"{pointer}: corrupt champion pointer: {exc!r}") from exc
    if not isinstance(name, str) or not VERSION_NAME.fullmatch(name):
        raise ShopguideError(f"{pointer}: corrupt champion pointer: bad version {name!r}")
    path = Path(root) / "versions" / name
    if not (path / METADATA).is_file():
        raise ShopguideError(f"{pointer}: champion {name} has no version directory")
    return Version(name, path)


def register(root: Path, model_dir: Path, metadata: dict, make_champion: bool = True) -> Version:
    """Copy `model_dir` into a new version and (by default) make it the champion."""
    root = Path(root)
    missing = [f for f in (WEIGHTS, CONFIG) if not (Path(model_dir) / f).is_file()]
    if missing:
        raise ShopguideError(f"{model_dir}: not a shopguide model (missing {', '.join(missing)})")
    with _locked(root):
        base = root / "versions"
        base.mkdir(parents=True, exist_ok=True)
        existing = [int(p.name[1:]) for p in base.iterdir() if VERSION_NAME.fullmatch(p.name)]
        name = f"v{max(existing, default=0) + 1:04d}"
        # Read the old pointer first: a corrupt one fails before a version is added.
        previous = champion(root) if make_champion else None
        stage = Path(tempfile.mkdtemp(prefix=".stage-", dir=root))
        try:
            shutil.copytree(model_dir, stage / name)
            meta = {**metadata, "version": name, "registered_at": datetime.now(UTC).isoformat()}
            (stage / name / METADATA).write_text(json.dumps(meta, indent=2, default=str) + "\n")
            os.replace(stage / name, base / name)
        finally:
            shutil.rmtree(stage, ignore_errors=True)
        version = Version(name, base / name)
        if make_champion:
            write_json(
                root / CHAMPION,
                {
                    "version": name,
                    "previous": previous.name if previous else None,
                    "promoted_at": datetime.now(UTC).isoformat(),
                },
            )
        return version
