"""Atomic artifact writes: a step either leaves a complete artifact or none at all."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from shopguide.errors import ShopguideError

# Rows per row group of the training and ranking sets: `train` streams them a row group at a
# time (shopguide.model.stream), and processes of a data-parallel run share them out.
ROW_GROUP_ROWS = 65_536


def _owner_tag() -> str:
    """This process, as named in its temporary directories: host and pid (pids repeat across
    the pods and machines that share a volume; host names do not)."""
    return f"{re.sub(r'[^A-Za-z0-9-]', '-', socket.gethostname())}-{os.getpid()}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _scratch(parent: Path, name: str) -> Path:
    """A new hidden temporary directory `.<name>.<host>-<pid>.*` in `parent`, after removing
    those of processes that are gone: a killed step cannot clean up after itself, so the next
    one that writes there does."""
    host = _owner_tag().rsplit("-", 1)[0]
    pattern = re.compile(rf"\.{re.escape(name)}\.{re.escape(host)}-(\d+)\..+")
    for path in parent.iterdir():
        found = pattern.fullmatch(path.name)
        if found and path.is_dir() and not _alive(int(found.group(1))):
            shutil.rmtree(path, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f".{name}.{_owner_tag()}.", dir=parent))


def refuse_directories(*paths: Path | str) -> None:
    """An output file path that is a directory is an error, found before any work."""
    for path in map(Path, paths):
        if path.is_dir() and not path.is_symlink():
            raise ShopguideError(f"{path}: is a directory; expected a file path for the output")


@contextlib.contextmanager
def atomic_path(target: Path | str) -> Iterator[Path]:
    """Yield a temporary sibling of `target`; move it into place only if the block succeeds.

    Works for files and directories. A failure removes the temporary path and leaves any
    existing `target` untouched; a killed process leaves it behind, and the next write of the
    same target removes it.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _scratch(target.parent, target.name)
    staged = tmp / target.name
    try:
        yield staged
        if not staged.exists():
            raise FileNotFoundError(f"{staged} was not written")
        if target.is_dir() and not target.is_symlink():
            if not staged.is_dir():
                raise ShopguideError(f"{target}: is a directory; not replacing it with a file")
            old = tmp / "old"
            os.replace(target, old)
        os.replace(staged, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def all_or_none(paths: list[Path]) -> Iterator[None]:
    """Run a block that replaces several files (each atomically); if it fails, put back every
    one it had already replaced and remove any it created, so a failed step never leaves new
    files beside old ones. The old files are kept as hard links (a copy where the file system
    has none) until the block ends. A path that is a directory is refused first."""
    refuse_directories(*paths)
    Path(paths[0]).parent.mkdir(parents=True, exist_ok=True)
    keep = _scratch(Path(paths[0]).parent, "previous")
    saved: dict[Path, Path | None] = {}
    try:
        for i, path in enumerate(map(Path, paths)):
            saved[path] = None
            if path.is_file():
                saved[path] = keep / f"{i}-{path.name}"
                try:
                    os.link(path, saved[path])
                except OSError:
                    shutil.copy2(path, saved[path])
        try:
            yield
        except BaseException:
            for path, old in saved.items():
                if old is not None:
                    os.replace(old, path)
                else:
                    path.unlink(missing_ok=True)
            raise
    finally:
        shutil.rmtree(keep, ignore_errors=True)


def write_json(path: Path | str, payload: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: Path | str) -> Any:
    """A JSON artifact; a missing, unreadable or corrupt one is an error that names it."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ShopguideError(f"{path}: not found") from exc
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ShopguideError(f"{path}: not a readable JSON file: {exc}") from exc


def fingerprint(path: Path | str) -> str:
    """sha256 of a file, or of every file under a directory in sorted order."""
    path = Path(path)
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        digest.update(str(f.relative_to(path) if path.is_dir() else f.name).encode())
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()
