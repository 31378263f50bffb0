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
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from shopguide.errors import ShopguideError
from shopguide.io import write_json

CHAMPION = "champion.json"
METADATA = "metadata.json"


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
    base = Path(root) / "versions"
    if not base.is_dir():
        return []
    return [Version(p.name, p) for p in sorted(base.iterdir())
            if p.is_dir() and p.name.startswith("v") and (p / METADATA).is_file()]


def champion(root: Path) -> Version | None:
    pointer = Path(root) / CHAMPION
    if not pointer.is_file():
        return None
    try:
        name = json.loads(pointer.read_text())["version"]
    except (json.JSONDecodeError, KeyError) as exc:
        raise ShopguideError(f"{pointer}: corrupt champion pointer: {exc}") from exc
    path = Path(root) / "versions" / name
    if not (path / METADATA).is_file():
        raise ShopguideError(f"{pointer}: champion {name} has no version directory")
    return Version(name, path)


def register(root: Path, model_dir: Path, metadata: dict, make_champion: bool = True) -> Version:
    """Copy `model_dir` into a new version and (by default) make it the champion."""
    root = Path(root)
    with _locked(root):
        base = root / "versions"
        base.mkdir(parents=True, exist_ok=True)
        existing = [int(p.name[1:]) for p in base.iterdir()
                    if p.name.startswith("v") and p.name[1:].isdigit()]
        name = f"v{max(existing, default=0) + 1:04d}"
        stage = Path(tempfile.mkdtemp(prefix=".stage-", dir=root))
        try:
            shutil.copytree(model_dir, stage / name)
            meta = {**metadata, "version": name,
                    "registered_at": datetime.now(UTC).isoformat()}
            (stage / name / METADATA).write_text(json.dumps(meta, indent=2, default=str) + "\n")
            os.replace(stage / name, base / name)
        finally:
            shutil.rmtree(stage, ignore_errors=True)
        version = Version(name, base / name)
        if make_champion:
            previous = champion(root)
            write_json(root / CHAMPION, {
                "version": name,
                "previous": previous.name if previous else None,
                "promoted_at": datetime.now(UTC).isoformat(),
            })
        return version
