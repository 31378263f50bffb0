"""params.yaml is validated on load and errors name the offending field."""

from __future__ import annotations

from pathlib import Path
from typing import get_args

import pytest

from shopguide.config import FeatureEntity, Params, load_params
from shopguide.errors import ShopguideError
from shopguide.feature_spec import feature_views

ROOT = Path(__file__).resolve().parents[1]


def test_project_params_load() -> None:
    params = load_params(ROOT / "params.yaml")
    assert params.protocol.tasks == ("click", "cart", "fav", "buy")
    assert params.protocol.label_horizon_s == 3 * 3600
    assert params == Params.model_validate(params.model_dump())


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("train:\n  learning_rat: 0.1\n", "train.learning_rat"),
        ("train:\n  batch_size: many\n", "train.batch_size"),
        ("bogus: 1\n", "bogus"),
        ("gate:\n  auc_floor: {cart: 0.5}\n", "gate.auc_floor has no entry for tasks"),
        ("serving:\n  ranking_weights: {click: 1}\n", "ranking_weights names tasks ['click']"),
        ("gate:\n  gauc_floor: {click: 0.5}\n", "gauc_floor names tasks ['click']"),
        ("protocol:\n  label_horizon_s: 0\n", "protocol.label_horizon_s"),
        ("sampling:\n  recent: -1\n", "sampling.recent"),
        ("model:\n  sequence_encoder: lstm\n", "model.sequence_encoder"),
        ("protocol:\n  test_start: 1\n", "window_start < test_start"),
        ("features:\n  snapshot_interval_s: {user: 7, item: 1, category: 1}\n", "user=7"),
        ("features:\n  snapshot_interval_s: {user_pair: 1}\n", "snapshot_interval_s.user_pair"),
        ("train: [1, 2\n", "not valid YAML"),
        ("train:\n  warmup_epochs: 20\n", "warmup_epochs (20) must be below max_epochs"),
        ("train:\n  learning_rate: .inf\n", "train.learning_rate"),
        ("protocol:\n  tasks: []\n", "protocol.tasks"),
        ("model:\n  expert_hidden: []\n", "model.expert_hidden"),
        ("data:\n  adapter: aliccp\n  drop_duplicate_events: true\n", "for the taobao and"),
        ("train:\n  batch_size: " + "9" * 500 + "x\n", "(got '99999999999"),
    ],
)
def test_bad_params_name_the_field(tmp_path: Path, text: str, fragment: str) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ShopguideError) as err:
        load_params(path)
    assert fragment in str(err.value)
    assert str(path) in str(err.value)


def test_switching_tasks_names_every_setting_to_change(tmp_path: Path) -> None:
    """protocol.tasks without fav: the default floors, rate bounds and ranking weights still
    name it, and one error lists all three (not a gate refusal after a whole run)."""
    path = tmp_path / "params.yaml"
    path.write_text("protocol:\n  tasks: [cart, buy]\n")
    with pytest.raises(ShopguideError) as err:
        load_params(path)
    for name in ("gate.auc_floor", "validation.positive_rate", "serving.ranking_weights"):
        assert f"{name} names tasks ['fav'] not in protocol.tasks" in str(err.value)
    # the message, not the whole parameters mapping after it (issue 27: about 80 lines)
    assert len(str(err.value).splitlines()) == 2 and "kubeflow" not in str(err.value)
    path.write_text(
        "protocol:\n  tasks: [cart, buy]\n"
        "gate:\n  auc_floor: {cart: 0.6, buy: 0.6}\n"
        "validation:\n  positive_rate: {cart: {min: 0, max: 1}, buy: {min: 0, max: 1}}\n"
        "serving:\n  ranking_weights: {buy: 1}\n"  # a subset: cart weighs 0 in the ranking
    )
    assert load_params(path).protocol.tasks == ("cart", "buy")


def test_missing_params_file(tmp_path: Path) -> None:
    with pytest.raises(ShopguideError, match="not found"):
        load_params(tmp_path / "nope.yaml")


def test_unreadable_params_file(tmp_path: Path) -> None:
    (tmp_path / "dir.yaml").mkdir()
    (tmp_path / "binary.yaml").write_bytes(b"\xff\xfe\x00garbage")
    for name in ("dir.yaml", "binary.yaml"):
        with pytest.raises(ShopguideError, match="cannot read the parameters file"):
            load_params(tmp_path / name)


def test_settings_only_the_model_can_judge_are_clear_errors() -> None:
    from shopguide.model.zoo import make_config

    params = Params().model.model_copy(update={"name": "esmm", "chain": {"buy": "nope"}})
    with pytest.raises(ShopguideError, match=r"model \(esmm\): invalid settings"):
        make_config(params, tasks=("cart", "fav", "buy"))


def test_json_artifacts_and_directories_are_never_clobbered(tmp_path: Path) -> None:
    """A corrupt JSON artifact names its file; an output path that is a directory is refused
    and the directory kept."""
    from shopguide.io import read_json, write_json

    (tmp_path / "bad.json").write_text("{bad")
    with pytest.raises(ShopguideError, match=r"bad\.json: not a readable JSON file"):
        read_json(tmp_path / "bad.json")
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("x")
    with pytest.raises(ShopguideError, match="is a directory"):
        write_json(victim, {"a": 1})
    assert (victim / "keep.txt").read_text() == "x"


def test_snapshot_grains_are_those_of_the_feature_views() -> None:
    """The per-view grain settings name exactly the views the features step builds, and a
    view left out is exact (1 s)."""
    features = load_params(ROOT / "params.yaml").features
    assert set(get_args(FeatureEntity)) == {v.grain for v in feature_views(3)}
    assert {features.interval(g) for g in get_args(FeatureEntity)} == {1}
