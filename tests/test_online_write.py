"""The bulk SQLite online writer against Feast's own write path: the pipeline run's online store
(written in bulk, the default for SQLite) must hold exactly the rows Feast's
`write_to_online_store` writes from the same feature tables, and `get_online_features` must
serve the same values from both, for known and unknown entities."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from feast.infra.online_stores.helpers import extract_text_and_num
from feast.protos.feast.types.Value_pb2 import Value
from feast.type_map import python_values_to_proto_values
from feast.types import Float32, Int64

from shopguide.feature_spec import FEATURE_SERVICE
from shopguide.features import apply_repo, materialize_online, open_store
from shopguide.online_write import _encode
from tests.conftest import PipelineRun, copy_feature_repo

UNKNOWN = 999_999_999_999


@pytest.fixture(scope="module")
def feast_written(pipeline_run: PipelineRun, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the pipeline's Feast repo, its online store written by Feast's write path."""
    repo = copy_feature_repo(tmp_path_factory.mktemp("feast_write") / "feature_repo")
    shutil.copytree(
        pipeline_run.feature_repo / "data",
        repo / "data",
        ignore=shutil.ignore_patterns("online_store.db*", "registry.db"),
    )
    store = apply_repo(repo)
    materialize_online(store, pipeline_run.events, pipeline_run.params, bulk_sqlite=False)
    return repo


COLUMNS = "entity_key, feature_name, value, value_text, event_ts, typeof(event_ts), created_ts"


def test_bulk_tables_equal_feasts(pipeline_run: PipelineRun, feast_written: Path) -> None:
    """Same tables, same rows: every column, and the storage class of event_ts."""
    conn = sqlite3.connect(pipeline_run.feature_repo / "data/online_store.db")
    conn.execute("ATTACH DATABASE ? AS feast", (str(feast_written / "data/online_store.db"),))
    listed = "SELECT name, sql FROM {}.sqlite_master ORDER BY name"
    assert (
        conn.execute(listed.format("main")).fetchall()
        == conn.execute(listed.format("feast")).fetchall()
    )
    tables = [t for (t,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    assert len(tables) == 7  # three stats, two pair views, the sequence, item attributes
    for t in tables:
        bulk, feast = (
            conn.execute(f'SELECT count(*) FROM {db}."{t}"').fetchone()[0]
            for db in ("main", "feast")
        )
        assert bulk == feast > 1_000, t
        for a, b in (("main", "feast"), ("feast", "main")):
            differ = conn.execute(
                f'SELECT count(*) FROM (SELECT {COLUMNS} FROM {a}."{t}" '
                f'EXCEPT SELECT {COLUMNS} FROM {b}."{t}")'
            ).fetchone()
            assert differ == (0,), (t, a, b)
    assert conn.execute("PRAGMA main.journal_mode").fetchone() == ("delete",)  # WAL undone
    conn.close()


def test_bulk_store_serves_what_feasts_serves(
    pipeline_run: PipelineRun, feast_written: Path
) -> None:
    frame = pd.read_parquet(pipeline_run.training_set).sample(200, random_state=5)
    rows = [
        {key: int(frame[key].iloc[i]) for key in ("user_id", "item_id", "category_id")}
        for i in range(len(frame))
    ]
    rows += [{key: UNKNOWN for key in rows[0]}, {key: 0 for key in rows[0]}]
    got = {}
    for name, repo in (("bulk", pipeline_run.feature_repo), ("feast", feast_written)):
        store = open_store(repo)
        got[name] = store.get_online_features(
            features=store.get_feature_service(FEATURE_SERVICE),
            entity_rows=rows,
            full_feature_names=True,
        ).to_dict()
    assert got["bulk"] == got["feast"]
    assert got["bulk"]["user_stats__pv_all"][-2] is None  # unknown entities
    assert sum(v is not None and v > 0 for v in got["bulk"]["user_stats__pv_all"]) > 100
    assert sum(v is not None and v > 0 for v in got["bulk"]["user_sequence__ts_0"]) > 100
    assert sum(v is not None and v > 0 for v in got["bulk"]["user_item_stats__pv_count"]) > 50


def test_encode_matches_feasts_value_protos() -> None:
    """The bulk float32 encoding and the converter fallback, value by value."""
    edge = [0.0, -0.0, 1.0, 0.1, 1e-45, 3.4028235e38, 123456.79, float("inf"), -2.5]
    cases = [
        (pa.array(edge, pa.float32()), Float32),  # bulk path
        (pa.array([1.5, None, float("nan"), 0.0], pa.float32()), Float32),  # nulls: Feast's
        (pa.array([0, 7, None, 2**62], pa.int64()), Int64),  # nulls: Feast's
        (pa.array([0, 1, 127, 128, 1512316763, 2**63 - 1, -1], pa.int64()), Int64),  # bulk
    ]
    for column, dtype in cases:
        blobs, texts = _encode(column, dtype)
        as_feast = pa.array(column.to_pandas(), from_pandas=True).to_numpy(zero_copy_only=False)
        protos = python_values_to_proto_values(as_feast, dtype.to_value_type())
        assert blobs == [p.SerializeToString() for p in protos]
        assert texts == [extract_text_and_num(p, False)[0] for p in protos]
    blobs, _ = _encode(cases[0][0], Float32)
    assert blobs[1] == Value(float_val=-0.0).SerializeToString() != b""
    np.testing.assert_array_equal(
        [Value.FromString(b).float_val for b in blobs], np.float32(edge).astype(float)
    )
