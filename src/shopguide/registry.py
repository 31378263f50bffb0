"""Local model registry: immutable versions plus a champion pointer.

Layout::

    registry/
      versions/v0001/  model.safetensors, config.json, metadata.json, MODEL_CARD.md
      champion.json    {"version": "v0001", "previous": null, "action": "promote", ...}
      history.jsonl    one line per champion change (promote, rollback), oldest first
      .lock

A version directory is staged under a temporary name (with its metadata and model card) and
renamed into place, and the champion pointer is replaced atomically, all under an exclusive
file lock, so concurrent promotions and rollbacks never leave a half-written version or a
pointer to one, and never lose a history line.

`previous` in the pointer is what `rollback` returns to: the champion before this one became
champion (for a rollback, the one before the restored version; for `rollback --to`, the
champion it replaced).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from shopguide.errors import ShopguideError
from shopguide.io import read_json, write_json
from shopguide.model.store import CONFIG, WEIGHTS, load_model, missing_files, require_model
from shopguide.model_card import render_model_card

CHAMPION = "champion.json"
METADATA = "metadata.json"
MODEL_CARD = "MODEL_CARD.md"
HISTORY = "history.jsonl"
VERSION_NAME = re.compile(r"v\d{4,}")


@dataclass(frozen=True)
class Version:
    name: str
    path: Path

    @property
    def metadata(self) -> dict:
        return read_json(self.path / METADATA)


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


def model_fingerprint(model_dir: Path) -> str:
    """sha256 of a model's weights and config only, in `io.fingerprint`'s layout: a copy of
    just those two files (a fine-tuning parent) has `fingerprint(copy) == this`."""
    require_model(model_dir)
    digest = hashlib.sha256()
    for name in sorted((WEIGHTS, CONFIG)):
        digest.update(name.encode())
        with (Path(model_dir) / name).open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def find_version(root: Path, name: str) -> Version:
    """A registered, complete version by name; an error naming the known ones otherwise."""
    if not VERSION_NAME.fullmatch(str(name)):
        raise ShopguideError(f"{name!r} is not a version name (like v0003)")
    known = versions(root)
    for v in known:
        if v.name == name:
            missing = missing_files(v.path)
            if missing:
                raise ShopguideError(f"{v.path}: incomplete version (missing {missing})")
            return v
    names = ", ".join(v.name for v in known) or "none"
    raise ShopguideError(f"{root}: no version {name} (registered: {names})")


def history(root: Path) -> list[dict]:
    """Champion changes, oldest first; a torn last line (a crash mid-append) is skipped."""
    path = Path(root) / HISTORY
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if isinstance(entry, dict):
                out.append(entry)
    return out


def _append_history(root: Path, entry: dict) -> None:
    with open(root / HISTORY, "a+b") as fh:
        if fh.seek(0, os.SEEK_END):
            fh.seek(-1, os.SEEK_END)
            if fh.read(1) != b"\n":  # a torn line (a crash mid-append) ends here, not this one
                fh.write(b"\n")
        fh.write((json.dumps(entry, default=str) + "\n").encode())
        fh.flush()
        os.fsync(fh.fileno())


def _set_pointer(root: Path, name: str, previous: str | None, action: str, **extra) -> None:
    """Replace the champion pointer (atomically) and log the change; caller holds the lock."""
    now = datetime.now(UTC).isoformat()
    pointer = {"version": name, "previous": previous, "action": action, "promoted_at": now}
    write_json(root / CHAMPION, pointer | extra)
    _append_history(
        root, {"at": now, "action": action, "version": name, "previous": previous} | extra
    )


def register(
    root: Path,
    model_dir: Path,
    metadata: dict,
    make_champion: bool = True,
    guard: Callable[[Version | None], None] | None = None,
    card: str | None = None,
) -> Version:
    """Copy `model_dir` into a new version (with its metadata and model card: `card`, or one
    rendered from the metadata) and, by default, make it the champion. `guard`, called with
    the current champion under the registry's lock, may raise to refuse (the champion must
    still be the one a gate compared with)."""
    root = Path(root)
    require_model(model_dir)
    with _locked(root):
        base = root / "versions"
        base.mkdir(parents=True, exist_ok=True)
        existing = [int(p.name[1:]) for p in base.iterdir() if VERSION_NAME.fullmatch(p.name)]
        name = f"v{max(existing, default=0) + 1:04d}"
        # Read the old pointer first: a corrupt one fails before a version is added.
        current = champion(root)
        if guard is not None:
            guard(current)
        previous = current if make_champion else None
        stage = Path(tempfile.mkdtemp(prefix=".stage-", dir=root))
        try:
            shutil.copytree(model_dir, stage / name)
            meta = {
                **metadata,
                "version": name,
                "registered_at": datetime.now(UTC).isoformat(),
                "model_fingerprint": model_fingerprint(stage / name),
            }
            (stage / name / METADATA).write_text(json.dumps(meta, indent=2, default=str) + "\n")
            config = json.loads((stage / name / CONFIG).read_text())
            (stage / name / MODEL_CARD).write_text(card or render_model_card(meta, config))
            os.replace(stage / name, base / name)
        finally:
            shutil.rmtree(stage, ignore_errors=True)
        version = Version(name, base / name)
        if make_champion:
            _set_pointer(root, name, previous.name if previous else None, "promote")
        return version


def rollback(root: Path, to: str | None = None, reason: str | None = None) -> tuple[str, str]:
    """Make an earlier version the champion again; returns (old champion, new champion).

    Without `to`, back to the pointer's `previous` (repeated rollbacks walk back through the
    champions in the order they were promoted); with `to`, that version, and a later plain
    rollback returns to the champion it replaced."""
    root = Path(root)
    with _locked(root):
        pointer_path = root / CHAMPION
        current = champion(root)
        if current is None:
            raise ShopguideError(f"{root}: no champion to roll back from")
        if to is None:
            pointer = json.loads(pointer_path.read_text())
            target = pointer.get("previous")
            if not target:
                raise ShopguideError(
                    f"{root}: champion {current.name} has no previous champion to roll back to"
                )
            # The restored version's own predecessor, as recorded when it last became champion.
            before = [e for e in history(root) if e.get("version") == target]
            previous = before[-1].get("previous") if before else None
        else:
            target, previous = to, current.name
        restored = find_version(root, target)
        if restored.name == current.name:
            raise ShopguideError(f"{root}: {restored.name} is already the champion")
        load_model(restored.path)  # a version whose files were damaged is never made champion
        extra = {"reason": reason} if reason else {}
        _set_pointer(root, restored.name, previous, "rollback", replaced=current.name, **extra)
        return current.name, restored.name
