"""Model registry: version numbering, the champion pointer and concurrent promotions, on a real
(tiny) saved MMoE so every version is a loadable model, not just a directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import yaml

from shopguide.errors import ShopguideError
from shopguide.model.mmoe import MMoE, MMoEConfig
from shopguide.model.store import CONFIG, WEIGHTS, load_model, save_model
from shopguide.registry import (
    CHAMPION,
    HISTORY,
    METADATA,
    MODEL_CARD,
    champion,
    find_version,
    history,
    model_fingerprint,
    register,
    rollback,
    version_name,
    versions,
)

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
    that is the last one registered (pointer writes happen under the same lock), a history in
    which every promotion names the one before it, no debris."""
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
    assert sorted(p.name for p in root.iterdir()) == [".lock", CHAMPION, HISTORY, "versions"]
    assert sorted(p.name for p in (root / "versions").iterdir()) == names
    assert_consistent_history(root)
    assert [e["version"] for e in history(root)] == names


def assert_consistent_history(root: Path) -> None:
    """Every champion change starts from the champion the previous change left, and the
    pointer agrees with the last one: no change was lost or interleaved."""
    entries = history(root)
    assert entries, "no history"
    for before, entry in zip([None, *entries], entries, strict=False):
        left = before["version"] if before else None
        if entry["action"] == "promote":
            assert entry["previous"] == left, entries
        else:
            assert entry["action"] == "rollback" and entry["replaced"] == left, entries
    pointer = json.loads((root / CHAMPION).read_text())
    assert pointer["version"] == entries[-1]["version"]
    assert pointer["previous"] == entries[-1]["previous"]


def test_version_has_lineage_and_a_model_card(tmp_path: Path, model_dir: Path) -> None:
    meta = {
        "git_commit": "abc123",
        "parent": "f" * 64,
        "parent_version": "v0007",
        "data_fingerprint": {"training_set": "a" * 64, "raw": "b" * 64},
        "params": {"serving": {"ranking_weights": {"cart": 1.0, "buy": 2.0}}},
        "metrics": {
            "overall": {"cart": {"auc": 0.61, "auc_ci": {"low": 0.6, "high": 0.62}, "rows": 9}},
            "slices": {"new_categories": {"cart": {"auc": None, "rows": 0}}},
            "bootstrap": {"samples": 100, "confidence": 0.95},
        },
        "gate": {"passed": True, "reasons": ["auc_floor cart: ok"], "checks": [{"passed": True}]},
    }
    version = register(tmp_path / "registry", model_dir, meta)
    saved = version.metadata
    assert saved["model_fingerprint"] == model_fingerprint(model_dir)
    assert saved["git_commit"] == "abc123" and saved["parent_version"] == "v0007"
    card = (version.path / MODEL_CARD).read_text()
    assert card.startswith("# Model card: shopguide v0001")
    for text in ("abc123", "v0007", "a" * 64, "1.0 x p(cart) + 2.0 x p(buy)", "## Limitations"):
        assert text in card, text
    assert "| all | cart | 0.6100 [0.6000, 0.6200] |" in card
    assert "- PASS: auc_floor cart: ok" in card
    # A version registered with no metadata still gets a card.
    bare = register(tmp_path / "registry", model_dir, {})
    assert "No evaluation metrics were recorded." in (bare.path / MODEL_CARD).read_text()


def test_rollback_walks_back_and_forth(tmp_path: Path, model_dir: Path) -> None:
    root = tmp_path / "registry"
    for _ in range(3):
        register(root, model_dir, {})
    assert rollback(root) == ("v0003", "v0002")
    assert champion(root).name == "v0002"
    assert rollback(root, reason="bad canary") == ("v0002", "v0001")
    with pytest.raises(ShopguideError, match="no previous champion"):
        rollback(root)
    assert rollback(root, to="v0003") == ("v0001", "v0003")
    assert rollback(root) == ("v0003", "v0001")  # back to the one `--to` replaced
    with pytest.raises(ShopguideError, match="already the champion"):
        rollback(root, to="v0001")
    with pytest.raises(ShopguideError, match=r"no version v0009 \(registered: v0001, v0002"):
        rollback(root, to="v0009")
    with pytest.raises(ShopguideError, match="not a version name"):
        rollback(root, to="../v0001")
    assert champion(root).name == "v0001"
    assert [e["action"] for e in history(root)] == ["promote"] * 3 + ["rollback"] * 4
    assert history(root)[4]["reason"] == "bad canary"
    assert_consistent_history(root)
    # A new promotion after rollbacks names the champion it replaced.
    assert register(root, model_dir, {}).name == "v0004"
    assert json.loads((root / CHAMPION).read_text())["previous"] == "v0001"
    assert_consistent_history(root)


def test_rollback_without_champion_and_find_version(tmp_path: Path, model_dir: Path) -> None:
    root = tmp_path / "registry"
    with pytest.raises(ShopguideError, match="no champion to roll back from"):
        rollback(root)
    register(root, model_dir, {}, make_champion=False)
    assert find_version(root, "v0001").name == "v0001"
    (root / "versions/v0001/model.safetensors").unlink()
    with pytest.raises(ShopguideError, match="incomplete version"):
        find_version(root, "v0001")


def test_history_skips_a_torn_last_line(tmp_path: Path, model_dir: Path) -> None:
    root = tmp_path / "registry"
    register(root, model_dir, {})
    with (root / HISTORY).open("a") as fh:
        fh.write('{"at": "2026-01-01", "action": "prom')
    assert [e["version"] for e in history(root)] == ["v0001"]
    register(root, model_dir, {})  # the next change is not glued onto the torn line
    assert [e["version"] for e in history(root)] == ["v0001", "v0002"]


MIXED_WORKER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from shopguide.errors import ShopguideError
    from shopguide.registry import champion, register, rollback

    root, model_dir, sync, worker = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), sys.argv[4]
    (sync / f"ready-{worker}").touch()
    while not (sync / "go").exists():
        time.sleep(0.005)
    if worker.startswith("reader"):
        # Read the champion and its metadata as fast as possible until the writers are done.
        reads = 0
        while not (sync / "done").exists():
            current = champion(root)
            if current is not None:
                assert current.metadata["version"] == current.name
            reads += 1
        print(reads)
    else:
        for k in range(4):
            if worker.startswith("rollback"):
                try:
                    rollback(root)
                except ShopguideError as exc:  # nothing to roll back to right now: fine
                    assert "no previous champion" in str(exc) or "already" in str(exc), exc
            else:
                register(root, model_dir, {"worker": worker, "k": k})
        print("ok")
""")


def test_concurrent_promotions_rollbacks_and_readers(tmp_path: Path, model_dir: Path) -> None:
    """Registering, rolling back and reading at once, in separate processes: readers never see
    a corrupt pointer or a half-written version, and the history stays one consistent chain."""
    root, sync = tmp_path / "registry", tmp_path / "sync"
    sync.mkdir()
    register(root, model_dir, {"seed": True})
    roles = ["register-0", "register-1", "register-2", "rollback-0", "rollback-1", "reader-0"]
    procs = {
        role: subprocess.Popen(
            [sys.executable, "-c", MIXED_WORKER, str(root), str(model_dir), str(sync), role],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for role in roles
    }
    try:
        deadline = time.monotonic() + 120
        while len(list(sync.glob("ready-*"))) < len(roles):
            assert time.monotonic() < deadline, "workers did not start"
            assert all(p.poll() is None for p in procs.values()), "a worker died early"
            time.sleep(0.02)
        (sync / "go").touch()
        results = {}
        for role, p in procs.items():
            if role.startswith("reader"):
                continue
            results[role] = p.communicate(timeout=120)
        (sync / "done").touch()
        results["reader-0"] = procs["reader-0"].communicate(timeout=60)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
    for role, p in procs.items():
        assert p.returncode == 0, f"{role}: {results[role][1]}"
    assert int(results["reader-0"][0]) > 0
    found = versions(root)
    assert [v.name for v in found] == [f"v{n:04d}" for n in range(1, 14)]  # 1 + 3 x 4
    for v in found:
        assert_complete(v.path, model_dir)
    assert_consistent_history(root)
    assert sum(e["action"] == "promote" for e in history(root)) == 13
    assert not list(root.glob(".stage-*"))


def shopguide_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "shopguide.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "COLUMNS": "200"},
    )


def test_models_commands(tmp_path: Path, model_dir: Path) -> None:
    root = tmp_path / "registry"
    params = tmp_path / "params.yaml"
    manifest = tmp_path / "isvc.yaml"
    params.write_text(f"registry:\n  path: {root}\ndeploy:\n  output: {manifest}\n")
    register(root, model_dir, {"metrics": {"mean_auc": 0.6123}, "git_commit": "1234567890abc"})
    register(root, model_dir, {"parent_version": "v0001", "gate": {"passed": True}})

    listed = shopguide_cli("models", "list", "--params", str(params))
    assert listed.returncode == 0, listed.stderr
    assert "v0001" in listed.stdout and "0.6123" in listed.stdout and "1234567890" in listed.stdout
    rows = json.loads(shopguide_cli("models", "list", "--json", "--registry", str(root)).stdout)
    assert [(r["version"], r["champion"], r["parent_version"]) for r in rows] == [
        ("v0001", False, None),
        ("v0002", True, "v0001"),
    ]

    shown = shopguide_cli("models", "show", "v0001", "--registry", str(root))
    assert shown.returncode == 0 and shown.stdout.startswith("# Model card: shopguide v0001")
    meta = json.loads(
        shopguide_cli("models", "show", "champion", "--json", "--params", str(params)).stdout
    )
    assert meta["version"] == "v0002"
    missing = shopguide_cli("models", "show", "v0042", "--registry", str(root))
    assert missing.returncode == 2 and "no version v0042" in missing.stderr

    back = shopguide_cli("models", "rollback", "--params", str(params), "--reason", "test")
    assert back.returncode == 0, back.stderr
    assert "champion: v0002 -> v0001" in back.stdout
    assert champion(root).name == "v0001"
    # the manifest follows the champion, as on promotion
    labels = yaml.safe_load(manifest.read_text())["metadata"]["labels"]
    assert labels["shopguide/model-version"] == "v0001"
    again = shopguide_cli("models", "rollback", "--params", str(params))
    assert again.returncode == 2 and "no previous champion" in again.stderr
    assert "Traceback" not in again.stderr
    forward = shopguide_cli("models", "rollback", "--to", "v0002", "--params", str(params))
    assert forward.returncode == 0 and champion(root).name == "v0002"
    # with the registry named and no params file: the rollback alone
    bare = shopguide_cli(
        "models", "rollback", "--registry", str(root), "--params", str(tmp_path / "none.yaml")
    )
    assert bare.returncode == 0, bare.stderr
    assert champion(root).name == "v0001" and "manifest not rendered" in bare.stdout
    labels = yaml.safe_load(manifest.read_text())["metadata"]["labels"]
    assert labels["shopguide/model-version"] == "v0002"


def test_damaged_versions_and_artifacts_are_clear_errors(tmp_path: Path, model_dir: Path) -> None:
    """A truncated weights file is named, never loaded; rollback refuses a damaged version and
    keeps the champion; corrupt metadata names its file."""
    root = tmp_path / "registry"
    first, second = register(root, model_dir, {}), register(root, model_dir, {})
    weights = first.path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ShopguideError, match="unreadable weights"):
        load_model(first.path)
    with pytest.raises(ShopguideError, match="unreadable weights"):
        rollback(root, to=first.name)
    assert champion(root).name == second.name
    (second.path / "metadata.json").write_text("{bad")
    with pytest.raises(ShopguideError, match=r"metadata.json: not a readable JSON file"):
        _ = second.metadata
