"""The serving feature readers against Feast's public `get_online_features`, on the pipeline's
materialized online store: both readers must give exactly the reference inputs for known and
unknown users and items, and the SQLite reader must fall back correctly on values it cannot
decode in bulk."""

from __future__ import annotations

import sqlite3

import numpy as np
import pandas as pd
import pytest

from shopguide.errors import ShopguideError
from shopguide.feature_spec import model_feature_columns
from shopguide.features import open_store
from shopguide.serving.features import (
    FeastReader,
    OnlineFeatureReader,
    SqliteReader,
    decode_values,
    make_reader,
)
from shopguide.serving.reference import reference_features
from tests.conftest import PipelineRun

UNKNOWN = 999_999_999_999
DENSE = tuple(model_feature_columns())
MOMENT = 1_512_400_000  # after the sample's last event: every age is positive


@pytest.fixture(scope="module")
def rows(pipeline_run: PipelineRun) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """300 (user, item) rows of the training set plus unknown users and items, and id 0, at
    moments around the data's end."""
    frame = pd.read_parquet(pipeline_run.training_set, columns=["user_id", "item_id"])
    sample = frame.sample(300, random_state=3)
    users = np.r_[sample["user_id"].to_numpy(np.int64), UNKNOWN, UNKNOWN, 0, 7]
    items = np.r_[sample["item_id"].to_numpy(np.int64), UNKNOWN, 5, 0, UNKNOWN]
    moments = MOMENT + np.arange(len(users)) * 7
    return users, items, moments


@pytest.mark.parametrize("kind", ["sqlite", "feast"])
def test_reader_equals_get_online_features(
    pipeline_run: PipelineRun, rows: tuple[np.ndarray, np.ndarray, np.ndarray], kind: str
) -> None:
    """Stats, user x item and user x category pairs and the users' recent events: the same
    model inputs as Feast's public API gives, ages at each row's moment included."""
    store = open_store(pipeline_run.feature_repo)
    users, items, moments = rows
    length = pipeline_run.params.features.sequence_length
    expected = reference_features(store, users, items, moments, DENSE, length)
    got = OnlineFeatureReader(make_reader(store, kind), DENSE, length).fetch(users, items, moments)
    np.testing.assert_array_equal(got.dense, expected.dense)
    np.testing.assert_array_equal(got.sequence, expected.sequence)
    assert (got.sequence[:300, 0, 2] > 0).all()  # every known user has a last event
    assert (got.sequence[300:302] == 0).all()  # unknown users: empty slots
    pair = DENSE.index("user_item_stats__pv_count")
    assert (got.dense[:300, pair] > 0).mean() > 0.5  # most rows' users viewed their item
    np.testing.assert_array_equal(got.categories, expected.categories)
    np.testing.assert_array_equal(got.user_known, expected.user_known)
    np.testing.assert_array_equal(got.item_known, expected.item_known)
    assert got.user_known[:300].all() and not got.user_known[300:302].any()
    assert got.item_known[:300].all() and not got.item_known[300]
    assert (got.dense[:300] != 0).any(axis=1).all(), "known rows read as all zeros"


def test_auto_picks_sqlite_for_a_sqlite_store(pipeline_run: PipelineRun) -> None:
    store = open_store(pipeline_run.feature_repo)
    assert isinstance(make_reader(store), SqliteReader)
    assert isinstance(make_reader(store, "feast"), FeastReader)
    with pytest.raises(ShopguideError, match="unknown online reader"):
        make_reader(store, "redis")


def test_entity_keys_are_feasts(pipeline_run: PipelineRun) -> None:
    from feast.infra.key_encoding_utils import serialize_entity_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey

    reader = SqliteReader(open_store(pipeline_run.feature_repo))
    ids = np.array([0, 1, 255, 2**40 + 3, 2**63 - 1], np.int64)
    for key, i in zip(reader.keys(("item_id",), ids), ids.tolist(), strict=True):
        proto = EntityKey(join_keys=["item_id"])
        proto.entity_values.add().int64_val = i
        assert key == serialize_entity_key(proto, entity_key_serialization_version=3)
    pairs = np.stack([ids, ids[::-1]], axis=1)  # (user_id, item_id): Feast sorts the names
    for key, (u, i) in zip(reader.keys(("user_id", "item_id"), pairs), pairs.tolist(), strict=True):
        proto = EntityKey(join_keys=["user_id", "item_id"])
        proto.entity_values.add().int64_val = u
        proto.entity_values.add().int64_val = i
        assert key == serialize_entity_key(proto, entity_key_serialization_version=3)


def test_decode_values_handles_every_shape() -> None:
    from feast.protos.feast.types.Value_pb2 import Value

    blobs = [
        Value(float_val=1.5).SerializeToString(),
        b"",  # null
        Value(double_val=2.25).SerializeToString(),
        Value(int64_val=7).SerializeToString(),
        Value(float_val=0.0).SerializeToString(),  # a set oneof field: 5 bytes, not b""
        Value(string_val="x").SerializeToString(),
    ]
    got = decode_values(blobs)
    assert got[0] == 1.5 and np.isnan(got[1]) and got[2] == 2.25 and got[3] == 7.0
    assert got[4] == 0.0 and np.isnan(got[5])


def test_sqlite_reader_rereads_entities_with_nulls(
    pipeline_run: PipelineRun, rows: tuple[np.ndarray, np.ndarray], tmp_path
) -> None:
    """An item whose stored values are not all plain floats (here: nulls, as Feast writes for
    missing values) takes the row-by-row path and still matches Feast."""
    import shutil

    repo = tmp_path / "repo"
    shutil.copytree(pipeline_run.feature_repo, repo)
    store = open_store(repo)
    reader = SqliteReader(store)
    users, items, moments = rows
    victim = int(items[0])
    (key,) = reader.keys(("item_id",), np.array([victim]))
    with sqlite3.connect(reader.path) as conn:
        table = reader.tables["item_stats"]
        changed = conn.execute(
            f"UPDATE \"{table}\" SET value = x'' WHERE entity_key = ? AND feature_name IN "
            "('pv_24h', 'buy_all')",
            (key,),
        ).rowcount
    assert changed == 2
    expected = reference_features(store, users[:5], items[:5], moments[:5], DENSE)
    got = OnlineFeatureReader(reader, DENSE).fetch(users[:5], items[:5], moments[:5])
    np.testing.assert_array_equal(got.dense, expected.dense)
    assert got.item_known[0]
