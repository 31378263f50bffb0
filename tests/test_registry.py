"""Model registry: version numbering, the champion pointer and concurrent promotions, on a real
(tiny) saved MMoE so every version is a loadable model, not just a directory."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from shopguide.errors import ShopguideError
from shopguide.model.mmoe import MMoE, MMoEConfig
from shopguide.model.store import CONFIG, WEIGHTS, load_model, save_model
from shopguide.registry import CHAMPION, METADATA, champion, register, version_name, versions

WORKERS = 6


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    config = MMoEConfig(
        tasks=("cart", "fav", "buy"),
        dense_features=("a", "b"),
        dense_mean=(0.0, 0.0),
        dense_std=(1.0, 1.0),
        user_buckets=11,
        item_buckets=13,
        category_buckets=7,
        embedding_dim=4,
        num_experts=2,
        expert_hidden=(8,),
        tower_hidden=(4,),
        dropout=0.0,
    )
    path = tmp_path_factory.mktemp("model") / "model"
    save_model(MMoE(config), path)
    return path


def assert_complete(path: Path, reference: Path) -> None:
    """A version holds the weights, config and metadata, and loads as the model it copied."""
    for name in (WEIGHTS, CONFIG, METADATA):
        assert (path / name).is_file(), f"{path} lacks {name}"
    assert json.loads((path / METADATA).read_text())["version"] == path.name
    loaded, original = load_model(path).state_dict(), load_model(reference).state_dict()
    assert loaded.keys() == original.keys()
    assert all(torch.equal(loaded[k], original[k]) for k in original)


def test_empty_registry_has_no_versions_and_no_champion(tmp_path: Path) -> None:
    assert versions(tmp_path / "registry") == []
    assert champion(tmp_path / "registry") is None


def test_versions_are_numbered_and_the_champion_moves(tmp_path: Path, model_dir: Path) -> None:
    root = tmp_path / "registry"
    for n in (1, 2, 3):
        version = register(root, model_dir, {"run": n})
        assert version.name == f"v{n:04d}"
        assert champion(root) == version
        assert_complete(version.path, model_dir)
        assert version.metadata["run"] == n
        pointer = json.loads((root / CHAMPION).read_text())
        assert pointer["previous"] == (f"v{n - 1:04d}" if n > 1 else None)
    assert [v.name for v in versions(root)] == ["v0001", "v0002", "v0003"]


def test_register_without_make_champion_keeps_the_champion(tmp_path: Path, model_dir: Path) -> None:
    root = tmp_path / "registry"
    first = register(root, model_dir, {})
    second = register(root, model_dir, {}, make_champion=False)
    assert second.name == "v0002"
    assert champion(root) == first
    assert [v.name for v in versions(root)] == ["v0001", "v0002"]


def test_versions_sort_by_number_past_v9999(tmp_path: Path, model_dir: Path) -> None:
    root = tmp_path / "registry"
    old = root / "versions" / "v9999"
    old.mkdir(parents=True)
    (old / METADATA).write_text('{"version": "v9999"}')
    assert register(root, model_dir, {}).name == "v10000"
    assert [v.name for v in versions(root)] == ["v9999", "v10000"]


@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        b"[]",
        b'"v0001"',
        b'{"champion": "v0001"}',
        b'{"version": 1}',
        b'{"version": "../../elsewhere"}',
        b"\xff\xfe\x00",
    ],
    ids=["not-json", "list", "string", "no-version", "number", "path-escape", "binary"],
)
def test_corrupt_champion_pointer_names_the_file(
    tmp_path: Path, model_dir: Path, content: bytes
) -> None:
    root = tmp_path / "registry"
    register(root, model_dir, {})
    (root / CHAMPION).write_bytes(content)
    with pytest.raises(ShopguideError, match="corrupt champion pointer") as err:
        champion(root)
    assert str(root / CHAMPION) in str(err.value)
    # Promotion refuses too, before it adds a version next to a pointer it cannot read.
    with pytest.raises(ShopguideError, match="corrupt champion pointer"):
        register(root, model_dir, {})
    assert [v.name for v in versions(root)] == ["v0001"]


def test_champion_pointer_to_a_missing_version_names_the_file(
    tmp_path: Path, model_dir: Path
) -> None:
    root = tmp_path / "registry"
    register(root, model_dir, {})
    (root / CHAMPION).write_text('{"version": "v0042"}')
    with pytest.raises(ShopguideError, match="v0042 has no version directory") as err:
        champion(root)
    assert str(root / CHAMPION) in str(err.value)


def test_register_refuses_a_directory_that_is_not_a_model(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ShopguideError, match=f"missing {WEIGHTS}, {CONFIG}"):
        register(tmp_path / "registry", empty, {})
    assert versions(tmp_path / "registry") == []


def test_version_name_survives_a_copy_under_another_name(tmp_path: Path, model_dir: Path) -> None:
    version = register(tmp_path / "registry", model_dir, {})
    mounted = tmp_path / "mnt" / "models"
    mounted.parent.mkdir()
    version.path.rename(mounted)
    assert version_name(mounted) == "v0001"
    assert version_name(model_dir) == "model"  # no metadata: the directory name


WORKER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from shopguide.registry import register

    root, model_dir, sync, worker = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), sys.argv[4]
    (sync / f"ready-{worker}").touch()
    deadline = time.monotonic() + 120
    while not (sync / "go").exists():
        if time.monotonic() > deadline:
            sys.exit("never told to go")
        time.sleep(0.005)
    print(register(root, model_dir, {"worker": int(worker)}).name)
""")


def test_concurrent_registrations_each_get_a_complete_version(
    tmp_path: Path, model_dir: Path
) -> None:
    """Six processes promote at the same instant: six distinct complete versions, a champion
    that is the last one registered (pointer writes happen under the same lock), no debris."""
    root, sync = tmp_path / "registry", tmp_path / "sync"
    sync.mkdir()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(root), str(model_dir), str(sync), str(i)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(WORKERS)
    ]
    try:
        deadline = time.monotonic() + 120
        while len(list(sync.glob("ready-*"))) < WORKERS:
            assert time.monotonic() < deadline, "workers did not start"
            assert all(p.poll() is None for p in procs), "a worker died before registering"
            time.sleep(0.02)
        (sync / "go").touch()
        results = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, (_, err) in zip(procs, results, strict=True):
        assert p.returncode == 0, err
    names = sorted(out.strip() for out, _ in results)
    assert names == [f"v{n:04d}" for n in range(1, WORKERS + 1)]
    found = versions(root)
    assert [v.name for v in found] == names
    assert sorted(v.metadata["worker"] for v in found) == list(range(WORKERS))
    for v in found:
        assert_complete(v.path, model_dir)
    current = champion(root)
    assert current is not None and current.name == names[-1]
    assert_complete(current.path, model_dir)
    assert sorted(p.name for p in root.iterdir()) == [".lock", CHAMPION, "versions"]
    assert sorted(p.name for p in (root / "versions").iterdir()) == names
