"""`shopguide cluster seed` lays out the data volume for uid/gid 1000, as the seed pod
(k8s/jobs/seed/seed.yaml) runs it; run here as uid 1000 on a directory owned by root or by
1000, which is what the volume looks like without and with the pod's fsGroup applied."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from shopguide.errors import ShopguideError
from shopguide.volume import LAYOUT, MARKER, seed_volume

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "feature_repo"


def test_seed_lays_out_the_volume_and_refreshes_only_the_definitions(tmp_path: Path) -> None:
    first = seed_volume(tmp_path, TEMPLATE)
    assert sorted(first["created"]) == sorted(LAYOUT)
    for name in LAYOUT:
        mode = (tmp_path / name).stat().st_mode
        assert mode & stat.S_ISGID and stat.S_IMODE(mode) & 0o070 == 0o070, name
    repo = tmp_path / "feature_repo"
    assert sorted(p.name for p in repo.iterdir()) == sorted(p.name for p in TEMPLATE.glob("*.py"))
    # The Feast config is the overlay's ConfigMap, never a copy on the volume.
    assert not (repo / "feature_store.yaml").exists()
    assert (tmp_path / MARKER).is_file()
    # Seeding again keeps what runs wrote and refreshes the definitions.
    (tmp_path / "registry" / "versions").mkdir()
    (tmp_path / "raw" / "UserBehavior.csv").write_text("1,2,3,pv,4\n")
    (repo / "entities.py").write_text("# stale\n")
    again = seed_volume(tmp_path, TEMPLATE)
    assert again["created"] == []
    assert again["raw"] == ["UserBehavior.csv"]
    assert (tmp_path / "registry" / "versions").is_dir()
    assert (repo / "entities.py").read_text() == (TEMPLATE / "entities.py").read_text()


def test_seed_without_a_volume_or_definitions_fails_clearly(tmp_path: Path) -> None:
    with pytest.raises(ShopguideError, match="not mounted"):
        seed_volume(tmp_path / "absent", TEMPLATE)
    with pytest.raises(ShopguideError, match="no Feast definitions"):
        seed_volume(tmp_path, tmp_path)


def test_an_unwritable_volume_says_who_owns_it_and_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("shopguide.volume.tempfile.NamedTemporaryFile", refuse)
    with pytest.raises(ShopguideError) as caught:
        seed_volume(tmp_path, TEMPLATE)
    message = str(caught.value)
    assert f"not writable by uid {os.getuid()}" in message
    assert "the volume root is uid" in message and "chown the volume root to 1000:1000" in message
    assert not (tmp_path / MARKER).exists()


def _runs_as_uid_1000() -> bool:
    if os.geteuid() != 0:
        return False
    try:
        probe = [sys.executable, "-c", "import shopguide.volume"]
        return subprocess.run(probe, user=1000, group=1000, timeout=60).returncode == 0
    except OSError:  # the interpreter lies where uid 1000 may not read (e.g. under /root)
        return False


@pytest.mark.skipif(not _runs_as_uid_1000(), reason="needs root and an interpreter uid 1000 runs")
def test_seed_as_uid_1000_fails_on_a_root_owned_volume_and_works_once_owned(
    tmp_path: Path,
) -> None:
    volume = tmp_path / "volume"
    volume.mkdir(mode=0o755)
    tmp_path.chmod(0o755)

    def seed() -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "shopguide.cli", "cluster", "seed"]
        command += ["--data-mount", str(volume), "--template", str(TEMPLATE)]
        return subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,
            user=1000,
            group=1000,
            extra_groups=[],
            env={**os.environ, "HOME": str(tmp_path)},
        )

    refused = seed()
    assert refused.returncode == 2, refused.stderr
    message = " ".join(refused.stderr.split())
    assert "not writable by uid 1000" in message
    assert "chown the volume root to 1000:1000" in message
    assert "Traceback" not in refused.stderr
    os.chown(volume, 1000, 1000)  # what fsGroup (or the storage side's chown) gives
    done = seed()
    assert done.returncode == 0, done.stderr
    for name in LAYOUT:
        assert (volume / name).stat().st_uid == 1000
    assert (volume / "feature_repo" / "entities.py").stat().st_gid == 1000
