"""`shopguide cluster seed`: lay out the shared data volume (shopguide-data) for the pipeline
steps and the predictor, which run as uid/gid 1000 (k8s/jobs/seed/seed.yaml runs it).

The layout is what the pipeline parameters default to (pipelines/stages.py): raw/ (the raw
CSV, copied in afterwards), feature_repo/ (the Feast definitions; their configuration is the
overlay's ConfigMap, not a file here), registry/ and validation/. Directories are setgid and
group-writable, so what any step writes stays the group's. Idempotent: seeding again refreshes
the Feast definitions from the image and leaves data, registry and profile alone.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import tempfile
from pathlib import Path

from shopguide.errors import ShopguideError

log = logging.getLogger(__name__)
LAYOUT = ("raw", "feature_repo", "registry", "validation")
MARKER = ".shopguide-seeded"
DIR_MODE = 0o2775  # setgid + rwxrwxr-x


def _owner(path: Path) -> str:
    info = path.stat()
    return f"uid {info.st_uid}, gid {info.st_gid}, mode {stat.filemode(info.st_mode)}"


def _check_writable(root: Path) -> None:
    """A probe file, since permission bits, ACLs, root squash and read-only mounts all
    decide; the error says who owns the volume and who tried."""
    if not root.is_dir():
        raise ShopguideError(f"{root}: the data volume is not mounted there")
    try:
        with tempfile.NamedTemporaryFile(dir=root, prefix=".write-probe-"):
            pass
    except OSError as exc:
        raise ShopguideError(
            f"{root} is not writable by uid {os.getuid()} gid {os.getgid()} "
            f"(groups {sorted(os.getgroups())}): the volume root is {_owner(root)} ({exc}). "
            "The pod's fsGroup 1000 did not apply (its storage driver ignores fsGroup, e.g. "
            "NFS): chown the volume root to 1000:1000 once on the storage side, then seed again"
        ) from exc


def seed_volume(root: Path, template: Path) -> dict:
    """Create the layout under `root` and copy the Feast definitions (`template`'s *.py) into
    root/feature_repo. Returns what was done; writes `root/MARKER` last, the seed pod's
    readiness."""
    root, template = Path(root), Path(template)
    definitions = sorted(template.glob("*.py"))
    if not definitions:
        raise ShopguideError(f"{template}: no Feast definitions (*.py) to seed from")
    _check_writable(root)
    created = []
    for name in LAYOUT:
        directory = root / name
        if not directory.exists():
            directory.mkdir()
            created.append(name)
        try:
            directory.chmod(DIR_MODE)
        except PermissionError:
            # Another uid made it: fine as long as this one can write into it.
            if not os.access(directory, os.W_OK | os.X_OK):
                raise ShopguideError(
                    f"{directory}: not writable by uid {os.getuid()} ({_owner(directory)})"
                ) from None
    repo = root / "feature_repo"
    for source in definitions:
        shutil.copyfile(source, repo / source.name)
    stray = repo / "feature_store.yaml"
    if stray.exists():
        log.warning(
            "%s is ignored on the cluster: every pod reads the ConfigMap shopguide-feast "
            "(FEAST_FS_YAML_FILE_PATH); delete it to avoid confusion",
            stray,
        )
    raw = sorted(p.name for p in (root / "raw").iterdir())
    (root / MARKER).write_text("seeded\n")
    log.info(
        "seeded %s: created %s, Feast definitions %s; raw/ holds %s",
        root,
        created or "nothing (already laid out)",
        [p.name for p in definitions],
        raw or "nothing yet: copy the raw CSV to raw/",
    )
    return {
        "created": created,
        "definitions": [p.name for p in definitions],
        "raw": raw,
        "owner": _owner(root),
    }
