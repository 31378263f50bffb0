"""Writes of the latest feature rows into the Feast online store.

Feast's SQLite `online_write_batch` upserts one Python row per feature value, each built from
a ValueProto: 420 s of the 624 s features step at 10M events (docs/benchmarks.md). When the
repo's online store is SQLite, `SqliteBulkWriter` writes the very same rows (Feast 0.67's
layout: table `<project>_<view>`, one row per (entity_key, feature_name) with the serialized
ValueProto, its text form, event_ts and created_ts) with the values encoded per column: float32
features as their 5-byte ValueProto in one numpy pass, any other type through Feast's own
converter. Entity keys and table names come from the serving `SqliteReader`, whose key
encoding is checked against Feast's serializer. Views it cannot encode exactly, and every
other online store type (Redis in production), go through Feast's `write_to_online_store`.
tests/test_online_write.py checks the tables row for row against Feast's write path.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from collections.abc import Callable, Iterator
from datetime import datetime
from itertools import repeat

import numpy as np
import pandas as pd
import pyarrow as pa
from feast import FeatureStore, FeatureView
from feast.infra.online_stores.helpers import extract_text_and_num
from feast.type_map import python_values_to_proto_values
from feast.types import Float32, Int64
from feast.utils import _coerce_datetime, to_naive_utc

from shopguide.errors import ShopguideError
from shopguide.serving.features import SqliteReader, is_sqlite_store

log = logging.getLogger(__name__)
# A ValueProto holding only `float_val` (field 6, fixed32): this tag byte + 4 little-endian bytes.
_FLOAT_TAG = 0x35
# A ValueProto holding only `int64_val` (field 4, varint): this tag byte + the varint.
_INT64_TAG = 0x20
# Page cache of the loading connection: index inserts touch pages all over both indexes.
_CACHE_KIB = 256 * 1024

WriteBatch = Callable[[FeatureView, pa.RecordBatch], None]


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _encode(column: pa.Array, dtype) -> tuple[list[bytes], list[str | None]]:
    """Serialized ValueProtos and their `value_text`, as Feast's write path makes them.

    Float32 values without nulls or NaNs (the counts and rates) and Int64 values without nulls
    (times, ids, codes) are encoded in bulk; anything else goes through Feast's converter on the
    column as Feast receives it (via pandas)."""
    if dtype == Float32 and column.type == pa.float32() and column.null_count == 0:
        values = column.to_numpy()
        if not np.isnan(values).any():
            raw = np.empty(len(values), [("tag", "u1"), ("value", "<f4")])
            raw["tag"], raw["value"] = _FLOAT_TAG, values
            joined = raw.tobytes()
            blobs = [joined[i : i + 5] for i in range(0, len(joined), 5)]
            return blobs, list(map(str, values.tolist()))
    if dtype == Int64 and column.type == pa.int64() and column.null_count == 0:
        values = column.to_numpy()
        return _int64_protos(values), list(map(str, values.tolist()))
    as_feast = pa.array(column.to_pandas(), from_pandas=True).to_numpy(zero_copy_only=False)
    protos = python_values_to_proto_values(as_feast, dtype.to_value_type())
    return (
        [p.SerializeToString() for p in protos],
        [extract_text_and_num(p, False)[0] for p in protos],
    )


def _int64_protos(values: np.ndarray) -> list[bytes]:
    """ValueProtos holding only `int64_val` (field 4, varint): the tag byte, then the value as
    a base-128 varint (negative values as their 64-bit two's complement, ten bytes)."""
    v = values.astype(np.int64).view(np.uint64)
    groups = np.stack([(v >> np.uint64(7 * k)) & np.uint64(0x7F) for k in range(10)], axis=1)
    nonzero = groups != 0
    length = np.where(nonzero.any(axis=1), 10 - np.argmax(nonzero[:, ::-1], axis=1), 1)
    more = np.arange(10)[None, :] < (length - 1)[:, None]
    raw = (groups | np.where(more, 0x80, 0).astype(np.uint64)).astype(np.uint8)
    flat = raw.tobytes()
    tag = bytes([_INT64_TAG])
    return [tag + flat[10 * i : 10 * i + n] for i, n in enumerate(length.tolist())]


def _event_ts(column: pa.Array) -> list[int]:
    """`event_ts` as Feast stores it: its datetime, made naive UTC, through the sqlite3 adapter
    Feast registers (epoch seconds), computed once per distinct timestamp."""
    micros = column.cast(pa.timestamp("us")).cast(pa.int64()).to_numpy()
    distinct, index = np.unique(micros, return_inverse=True)
    adapt = sqlite3.adapters[(datetime, sqlite3.PrepareProtocol)]
    stored = [
        adapt(to_naive_utc(_coerce_datetime(pd.Timestamp(us, unit="us", tz="UTC"))))
        for us in distinct.tolist()
    ]
    return [stored[i] for i in index.tolist()]


class SqliteBulkWriter:
    """Bulk upserts into the tables of Feast's SQLite online store, during a load with WAL
    journaling and no fsyncs (the previous journal mode is restored on close).

    Feast's secondary index on entity_key is dropped from a table before its first write and
    rebuilt, from its own stored definition, on close: one sort instead of an index insert per
    row, which made the load about 2x slower. The primary key, which the upserts need, stays."""

    def __init__(self, store: FeatureStore) -> None:
        self.layout = SqliteReader(store)
        self.config = store.config
        self.conn = sqlite3.connect(self.layout.path, timeout=60)
        (self._journal,) = self.conn.execute("PRAGMA journal_mode").fetchone()
        self.conn.execute("PRAGMA journal_mode = WAL")
        # Per connection, so it ends with this one. A killed process loses at most the open
        # batch (and leaves the index to Feast's next `apply`, which recreates it); only an OS
        # crash mid-load can damage the file, which the features step rebuilds anyway.
        self.conn.execute("PRAGMA synchronous = OFF")
        self.conn.execute(f"PRAGMA cache_size = -{_CACHE_KIB}")
        self._indexes: dict[str, list[str]] = {}  # table -> CREATE INDEX of the dropped ones

    def _drop_indexes(self, table: str) -> None:
        if table in self._indexes:
            return
        found = self.conn.execute(
            "SELECT name, sql FROM sqlite_master "
            "WHERE type = 'index' AND tbl_name = ? AND sql IS NOT NULL",
            (table,),
        ).fetchall()
        with self.conn:
            for name, _ in found:
                self.conn.execute(f"DROP INDEX {_quote(name)}")
        self._indexes[table] = [sql for _, sql in found]

    def close(self) -> None:
        with self.conn:
            for sql in (sql for dropped in self._indexes.values() for sql in dropped):
                self.conn.execute(sql)
        self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        (mode,) = self.conn.execute(f"PRAGMA journal_mode = {self._journal}").fetchone()
        if mode != self._journal:
            log.warning("%s stays in %s journal mode (in use elsewhere)", self.layout.path, mode)
        self.conn.close()

    def supports(self, view: FeatureView) -> bool:
        """Whether this writer stores exactly what Feast would: int64 join keys, no column
        mapping or created timestamp, and a plain SQLite store (no vector or numeric column)."""
        online = self.config.online_store
        source = view.batch_source
        return (
            len(view.entity_columns) >= 1
            and all(c.dtype == Int64 for c in view.entity_columns)
            and source is not None
            and not source.field_mapping
            and not source.created_timestamp_column
            and not getattr(online, "vector_enabled", False)
            and not getattr(online, "enable_openai_compatible_store", False)
        )

    def write(self, view: FeatureView, batch: pa.RecordBatch) -> None:
        """Upsert every feature of every row of `batch`, in entity key order (the order of both
        indexes, so inserts land on neighbouring pages), in one transaction."""
        join_keys = tuple(view.join_keys)
        if not len(batch):
            return
        for key in join_keys:
            if batch.column(key).null_count:
                raise ShopguideError(f"{view.batch_source.path}: rows with a null {key}")
        ids = np.stack([batch.column(k).to_numpy() for k in join_keys], axis=1)
        keys = self.layout.keys(join_keys, ids)
        order = sorted(range(len(keys)), key=keys.__getitem__)
        batch = batch.take(pa.array(order))
        keys = [keys[i] for i in order]
        ts = _event_ts(batch.column(view.batch_source.timestamp_field))
        features = sorted(view.features, key=lambda f: f.name)
        width, size = len(features), len(keys) * len(features)
        key_col: list = [None] * size
        blob_col: list = [None] * size
        text_col: list = [None] * size
        ts_col: list = [None] * size
        for j, feature in enumerate(features):
            key_col[j::width], ts_col[j::width] = keys, ts
            blob_col[j::width], text_col[j::width] = _encode(
                batch.column(feature.name), feature.dtype
            )
        names = [f.name for f in features] * len(keys)
        table = self.layout.tables[view.name]
        self._drop_indexes(table)
        with self.conn:
            self.conn.executemany(
                f"INSERT INTO {_quote(table)} "
                "(entity_key, feature_name, value, value_text, event_ts, created_ts) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(entity_key, feature_name) DO UPDATE SET "
                "value = excluded.value, value_text = excluded.value_text, "
                "event_ts = excluded.event_ts, created_ts = excluded.created_ts",
                zip(key_col, names, blob_col, text_col, ts_col, repeat(None), strict=False),
            )


@contextlib.contextmanager
def online_writer(store: FeatureStore, bulk_sqlite: bool = True) -> Iterator[WriteBatch]:
    """A function writing (view, rows) into the online store: `SqliteBulkWriter` for the views
    it supports when the store is SQLite (unless `bulk_sqlite` is off), else Feast's path."""

    def through_feast(view: FeatureView, batch: pa.RecordBatch) -> None:
        store.write_to_online_store(view.name, df=batch.to_pandas())

    if not bulk_sqlite or not is_sqlite_store(store):
        yield through_feast
        return
    writer = SqliteBulkWriter(store)

    def write(view: FeatureView, batch: pa.RecordBatch) -> None:
        (writer.write if writer.supports(view) else through_feast)(view, batch)

    try:
        yield write
    finally:
        writer.close()
