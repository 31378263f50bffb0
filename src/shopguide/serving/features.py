"""Online feature lookup for a batch of (user, candidate item) rows scored at a moment.

Each view is read from the Feast online store once per batch, for its distinct keys only (ids,
or user x item and user x category pairs); the rows then gather their values by index, so cost
grows with distinct keys, not with rows. The model's inputs follow from the raw values and the
moment by `shopguide.feature_spec` (ages, the recent-event sequence), as in training.

Two readers of the same online store:

* `SqliteReader`, for Feast's SQLite online store (the laptop default): one indexed
  ``SELECT ... WHERE entity_key IN (...)`` per feature view on the table Feast materialized,
  with entity keys built from Feast's own serialization (checked against
  `serialize_entity_key` at start-up) and float values decoded in bulk. It reads exactly what
  `FeatureStore.get_online_features` reads, about 15x faster: Feast's generic path builds a
  protobuf response and a Python dict per call, which for 100 candidates costs more than the
  whole latency budget.
* `FeastReader`, for any other online store (Redis in production): Feast's
  `OnlineStore.online_read` with the entity keys of all distinct ids in one call per view.

Both are checked against `get_online_features` in tests/test_online_reader.py.
"""

from __future__ import annotations

import sqlite3
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from feast import FeatureStore
from feast.infra.key_encoding_utils import serialize_entity_key
from feast.infra.online_stores.helpers import compute_table_id
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Value as ValueProto

from shopguide.errors import ShopguideError
from shopguide.feature_spec import (
    ITEM_ATTRIBUTES_VIEW,
    PAIRS,
    SEQUENCE_VIEW,
    dense_inputs,
    model_feature_columns,
    pair_features,
    sequence_features,
    sequence_inputs,
    stat_features,
    stats_view,
)

CATEGORY_FEATURE = "category_id"
# A ValueProto holding only `float_val` (field 6, fixed32): tag byte 0x35 + 4 little-endian bytes.
_FLOAT_TAG = 0x35
_FLOAT_LEN = 5
_MAX_PARAMS = 900  # ids per statement, below SQLite's bound-parameter limit
_MMAP_BYTES = 1 << 30
_MARK = 0x0102030405060708  # an id whose bytes locate its place in a serialized key
_UNKNOWN_ENCODING = (
    "Feast's entity key serialization is not the one the SQLite reader knows; configure "
    "another online store type to serve through Feast"
)


@dataclass(frozen=True)
class OnlineFeatures:
    dense: np.ndarray  # (rows, features) float32 in the model's dense feature order, 0 if absent
    sequence: np.ndarray  # (rows, length, 4) int64, the model's sequence input
    categories: np.ndarray  # (rows,) int64, 0 where the item is unknown
    user_known: np.ndarray  # (rows,) bool
    item_known: np.ndarray  # (rows,) bool


def check_dense_order(dense_order: tuple[str, ...]) -> None:
    """Fail at load, not per request, when the model wants a feature this lookup never reads
    (it would otherwise be served as a silent 0)."""
    unknown = sorted(set(dense_order) - set(model_feature_columns()))
    if unknown:
        raise ShopguideError(f"the model needs features the online lookup does not read: {unknown}")


def _value_to_float(value: ValueProto) -> float:
    kind = value.WhichOneof("val")
    if kind in ("float_val", "double_val", "int32_val", "int64_val"):
        return float(getattr(value, kind))
    if kind == "bool_val":
        return float(value.bool_val)
    return np.nan  # null or a type no model feature has


def _value_to_int(value: ValueProto) -> int | None:
    kind = value.WhichOneof("val")
    return getattr(value, kind) if kind in ("int64_val", "int32_val") else None


def decode_values(blobs: list[bytes]) -> np.ndarray:
    """Serialized ValueProtos -> float64, NaN for nulls. Float32 values (all the stats
    features) are decoded in one vectorised pass; anything else through protobuf."""
    n = len(blobs)
    out = np.full(n, np.nan)
    if not n:
        return out
    lengths = np.fromiter(map(len, blobs), np.int64, n)
    joined = np.frombuffer(b"".join(blobs), np.uint8)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    fast = lengths == _FLOAT_LEN
    fast[fast] = joined[starts[fast]] == _FLOAT_TAG
    if fast.any():
        offsets = starts[fast, None] + np.arange(1, _FLOAT_LEN)
        out[fast] = joined[offsets].copy().view("<f4").ravel()
    for i in np.flatnonzero(~fast & (lengths > 0)):
        value = ValueProto()
        value.ParseFromString(blobs[i])
        out[i] = _value_to_float(value)
    return out


def decode_ints(blobs: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """Serialized integer ValueProtos -> (int64 values, valid mask); exact for every int64."""
    values = np.zeros(len(blobs), np.int64)
    valid = np.zeros(len(blobs), bool)
    for i, blob in enumerate(blobs):
        value = ValueProto()
        value.ParseFromString(blob)
        kind = value.WhichOneof("val")
        if kind in ("int64_val", "int32_val"):
            values[i], valid[i] = getattr(value, kind), True
    return values, valid


def entity_key_proto(join_keys: tuple[str, ...], values: tuple[int, ...]) -> EntityKeyProto:
    proto = EntityKeyProto(join_keys=list(join_keys))
    for value in values:
        proto.entity_values.add().int64_val = value
    return proto


def _entity_key(join_keys: tuple[str, ...], values: tuple[int, ...], version: int) -> bytes:
    return serialize_entity_key(
        entity_key_proto(join_keys, values), entity_key_serialization_version=version
    )


def key_rows(ids: np.ndarray) -> np.ndarray:
    """Ids as a (rows, keys) int64 matrix: one column per join key."""
    ids = np.asarray(ids, np.int64)
    return ids.reshape(len(ids), -1)


class Reader(Protocol):
    def read(
        self, view: str, join_keys: tuple[str, ...], ids: np.ndarray, features: list[str]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Values (len(ids), len(features)) float64, NaN where absent, and whether the online
        store holds the key at all (len(ids),) bool. `ids`: (rows,) for one join key, else
        (rows, keys) in `join_keys` order."""
        ...

    def read_ints(
        self, view: str, join_keys: tuple[str, ...], ids: np.ndarray, features: list[str]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Integer features, exact: (len(ids), len(features)) int64 values, 0 where absent,
        and whether the online store holds the key at all."""
        ...


class SqliteReader:
    """Direct reads of the tables Feast's SQLite online store materialized."""

    def __init__(self, store: FeatureStore) -> None:
        from feast.infra.online_stores.sqlite import SqliteOnlineStore

        config = store.config
        self.path = Path(SqliteOnlineStore._get_db_path(config)).resolve()
        if not self.path.is_file():
            raise ShopguideError(f"{self.path}: the Feast online store does not exist")
        self.version = config.entity_key_serialization_version
        versioning = getattr(config.registry, "enable_online_feature_view_versioning", False)
        self.tables = {
            view.name: compute_table_id(config.project, view, versioning)
            for view in store.list_feature_views()
        }
        self._layouts_by_keys: dict[tuple[str, ...], tuple[np.ndarray, list[int]]] = {}
        self._layouts: dict[tuple, np.ndarray] = {}
        self._local = threading.local()

    def _table(self, view: str) -> str:
        table = self.tables.get(view)
        if table is None:
            raise ShopguideError(f"feature view {view!r} is not registered in the Feast repo")
        return '"' + table.replace('"', '""') + '"'

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:  # one read-only connection per thread: threads never share one
            conn = sqlite3.connect(f"{self.path.as_uri()}?mode=ro", uri=True, timeout=10)
            # Concatenated value blobs come back as TEXT; keep them as the raw bytes.
            conn.text_factory = bytes
            # Memory-mapped reads: a lookup touches ~2,000 rows in scattered pages, and going
            # through read() for each page costs more than the lookup itself.
            conn.execute(f"PRAGMA mmap_size = {_MMAP_BYTES}")
            self._local.conn = conn
        return conn

    def _layout(self, join_keys: tuple[str, ...]) -> tuple[np.ndarray, list[int]]:
        """Feast's serialized entity key of int64 ids is a fixed template (key count, names,
        value types and lengths) with each id as little-endian int64 at a fixed offset. The
        template and offsets come from Feast's serializer and are checked against it for ids
        of every magnitude, so a change in Feast's encoding fails at start-up instead of
        silently missing every row."""
        layout = self._layouts_by_keys.get(join_keys)
        if layout is None:
            zeros = (0,) * len(join_keys)
            template = np.frombuffer(_entity_key(join_keys, zeros, self.version), np.uint8)
            offsets = []
            for j in range(len(join_keys)):
                marked = tuple(_MARK if i == j else 0 for i in range(len(join_keys)))
                probe = np.frombuffer(_entity_key(join_keys, marked, self.version), np.uint8)
                start = probe.tobytes().find(struct.pack("<q", _MARK))
                if start < 0 or len(probe) != len(template):
                    raise ShopguideError(_UNKNOWN_ENCODING)
                offsets.append(start)
            layout = (template, offsets)
            samples = (1, 255, 65_536, 2**31, 2**62 + 12_345, 2**63 - 1)
            for sample in samples:
                values = tuple(sample + i for i in range(len(join_keys)))
                values = tuple(min(v, 2**63 - 1) for v in values)
                built = self._build(layout, np.array([values], np.int64))[0]
                if built != _entity_key(join_keys, values, self.version):
                    raise ShopguideError(_UNKNOWN_ENCODING)
            self._layouts_by_keys[join_keys] = layout
        return layout

    @staticmethod
    def _build(layout: tuple[np.ndarray, list[int]], ids: np.ndarray) -> list[bytes]:
        template, offsets = layout
        rows = np.tile(template, (len(ids), 1))
        for j, offset in enumerate(offsets):
            rows[:, offset : offset + 8] = ids[:, j].astype("<i8").view(np.uint8).reshape(-1, 8)
        raw = rows.tobytes()
        width = len(template)
        return [raw[i : i + width] for i in range(0, len(raw), width)]

    def keys(self, join_keys: tuple[str, ...], ids: np.ndarray) -> list[bytes]:
        """Serialized entity keys of `ids` ((rows,) or (rows, keys) in `join_keys` order)."""
        return self._build(self._layout(tuple(join_keys)), key_rows(ids))

    def _rows(
        self, view: str, join_keys: tuple[str, ...], ids: np.ndarray, features: list[str]
    ) -> tuple[np.ndarray, np.ndarray, tuple[bytes, ...]]:
        """(row index, feature index, value blob) of every stored value of `ids`."""
        table = self._table(view)
        keys = self.keys(join_keys, ids)
        rows: list[tuple[bytes, bytes, bytes]] = []
        conn = self._conn()
        for start in range(0, len(keys), _MAX_PARAMS):
            chunk = keys[start : start + _MAX_PARAMS]
            rows += conn.execute(
                f"SELECT entity_key, feature_name, value FROM {table} "
                f"WHERE entity_key IN ({','.join('?' * len(chunk))})",
                chunk,
            ).fetchall()
        if not rows:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), ()
        entity_keys, names, blobs = zip(*rows, strict=True)
        position = {k: i for i, k in enumerate(keys)}
        column = {f: j for j, f in enumerate(features)}
        row = np.fromiter(map(position.__getitem__, entity_keys), np.int64, len(rows))
        col = np.fromiter((column.get(n.decode(), -1) for n in names), np.int64, len(rows))
        return row, col, blobs

    def read(
        self, view: str, join_keys: tuple[str, ...], ids: np.ndarray, features: list[str]
    ) -> tuple[np.ndarray, np.ndarray]:
        """One row per entity: SQLite concatenates an entity's feature names and value blobs
        (in the same order: both aggregates run over the same rows), so Python handles 100
        rows instead of 1,800 for 100 items.

        The bulk decode takes an entity only when its concatenated blob is 5 bytes per value
        and every 5th byte is the float tag: a ValueProto that starts with that tag is exactly
        5 bytes (a single `float_val`), so by induction from the first byte every value is
        one. Anything else (a null is 0 bytes, a NULL is skipped by group_concat, another type
        has another tag) sends the entity to the row-by-row path."""
        out = np.full((len(ids), len(features)), np.nan)
        present = np.zeros(len(ids), bool)
        if not len(ids):
            return out, present
        table = self._table(view)
        keys = self.keys(join_keys, ids)
        position = {k: i for i, k in enumerate(keys)}
        rows = []
        conn = self._conn()
        for start in range(0, len(keys), _MAX_PARAMS):
            chunk = keys[start : start + _MAX_PARAMS]
            rows += conn.execute(
                f"SELECT entity_key, group_concat(feature_name), group_concat(value, ''), "
                f"count(*) FROM {table} "
                f"WHERE entity_key IN ({','.join('?' * len(chunk))}) GROUP BY entity_key",
                chunk,
            ).fetchall()
        slow: list[int] = []
        by_layout: dict[bytes, list[tuple[int, bytes]]] = {}
        for key, names, blob, count in rows:
            r = position[key]
            present[r] = True
            if len(blob) == _FLOAT_LEN * count:
                by_layout.setdefault(names, []).append((r, blob))
            else:
                slow.append(r)
        for names, group in by_layout.items():
            columns = self._columns(names, features)
            index = np.array([r for r, _ in group])
            raw = np.frombuffer(b"".join(b for _, b in group), np.uint8)
            raw = raw.reshape(len(group), len(columns), _FLOAT_LEN)
            plain = (raw[:, :, 0] == _FLOAT_TAG).all(axis=1)
            values = raw[plain, :, 1:].copy().view("<f4")[..., 0]
            keep = columns >= 0
            out[np.ix_(index[plain], columns[keep])] = values[:, keep]
            slow += index[~plain].tolist()
        if slow:
            slow_ids = key_rows(ids)[slow]
            row, col, blobs = self._rows(view, join_keys, slow_ids, features)
            keep = col >= 0
            out[np.asarray(slow)[row[keep]], col[keep]] = decode_values(blobs)[keep]
        return out, present

    def _columns(self, names: bytes, features: list[str]) -> np.ndarray:
        """Where each name of a concatenated name list goes among `features` (-1: not
        requested); cached, since every entity of a view has the same layout."""
        key = (names, tuple(features))
        columns = self._layouts.get(key)
        if columns is None:
            index = {f: j for j, f in enumerate(features)}
            columns = np.array([index.get(n, -1) for n in names.decode().split(",")])
            self._layouts[key] = columns
        return columns

    def read_ints(
        self, view: str, join_keys: tuple[str, ...], ids: np.ndarray, features: list[str]
    ) -> tuple[np.ndarray, np.ndarray]:
        out = np.zeros((len(ids), len(features)), np.int64)
        present = np.zeros(len(ids), bool)
        if not len(ids):
            return out, present
        row, col, blobs = self._rows(view, join_keys, ids, features)
        present[row] = True
        keep = col >= 0
        values, ok = decode_ints([b for b, k in zip(blobs, keep, strict=True) if k])
        out[row[keep][ok], col[keep][ok]] = values[ok]
        return out, present


class FeastReader:
    """Feast's `OnlineStore.online_read` on whatever online store the repo configures."""

    def __init__(self, store: FeatureStore) -> None:
        self.config = store.config
        self.online_store = store._get_provider().online_store
        self.views = {view.name: view for view in store.list_feature_views()}

    def _online_read(
        self, view: str, join_keys: tuple[str, ...], ids: np.ndarray, features: list[str]
    ):
        if view not in self.views:
            raise ShopguideError(f"feature view {view!r} is not registered in the Feast repo")
        keys = [entity_key_proto(join_keys, tuple(row)) for row in key_rows(ids).tolist()]
        return self.online_store.online_read(self.config, self.views[view], keys, features)

    def read(
        self, view: str, join_keys: tuple[str, ...], ids: np.ndarray, features: list[str]
    ) -> tuple[np.ndarray, np.ndarray]:
        out = np.full((len(ids), len(features)), np.nan)
        return self._fill(out, view, join_keys, ids, features, _value_to_float)

    def read_ints(
        self, view: str, join_keys: tuple[str, ...], ids: np.ndarray, features: list[str]
    ) -> tuple[np.ndarray, np.ndarray]:
        out = np.zeros((len(ids), len(features)), np.int64)
        return self._fill(out, view, join_keys, ids, features, _value_to_int)

    def _fill(
        self,
        out: np.ndarray,
        view: str,
        join_keys: tuple[str, ...],
        ids: np.ndarray,
        features: list[str],
        convert: Callable[[ValueProto], float | int | None],
    ) -> tuple[np.ndarray, np.ndarray]:
        """`out` (rows, features) with each stored value `convert` gives (None: left as it
        was), and whether the store holds each row's key."""
        present = np.zeros(len(ids), bool)
        if not len(ids):
            return out, present
        for r, (_, values) in enumerate(self._online_read(view, join_keys, ids, features)):
            if not values:
                continue
            present[r] = True
            for j, name in enumerate(features):
                value = values.get(name)
                converted = convert(value) if value is not None else None
                if converted is not None:
                    out[r, j] = converted
        return out, present


def is_sqlite_store(store: FeatureStore) -> bool:
    """Whether the repo's online store is Feast's SQLite store."""
    kind = str(store.config.online_store.type)
    return kind == "sqlite" or kind.endswith("SqliteOnlineStore")


def make_reader(store: FeatureStore, kind: str = "auto") -> Reader:
    """`SqliteReader` for a SQLite online store (unless `kind` is "feast"), else `FeastReader`."""
    if kind not in ("auto", "sqlite", "feast"):
        raise ShopguideError(f"unknown online reader {kind!r}: use auto, sqlite or feast")
    is_sqlite = is_sqlite_store(store)
    if kind == "sqlite" and not is_sqlite:
        raise ShopguideError(
            f"the sqlite reader needs a SQLite online store, not {store.config.online_store.type}"
        )
    if is_sqlite and kind != "feast":
        return SqliteReader(store)
    return FeastReader(store)


def pairs_of(first: np.ndarray, second: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct (first, second) pairs as a (pairs, 2) matrix, and each row's pair index."""
    pairs, row = np.unique(np.stack([first, second], axis=1), axis=0, return_inverse=True)
    return pairs.reshape(-1, 2), row.ravel()


class OnlineFeatureReader:
    """Everything the model needs for (user, item) rows at their moments: one batched read per
    view (users, items, the items' categories, their categories, user x item and user x
    category pairs, the users' recent events), then the model's inputs from those values."""

    def __init__(
        self, reader: Reader, dense_order: tuple[str, ...], sequence_length: int = 0
    ) -> None:
        check_dense_order(dense_order)
        self.reader = reader
        self.dense_order = dense_order
        self.sequence_length = sequence_length

    def _read(self, view: str, keys: tuple[str, ...], ids: np.ndarray, features: list[str]):
        return self.reader.read(view, keys, ids, features)

    def fetch(
        self, user_ids: np.ndarray, item_ids: np.ndarray, moments: np.ndarray
    ) -> OnlineFeatures:
        """The model inputs of rows (user_ids[i], item_ids[i]) scored at moments[i]."""
        users, user_row = np.unique(user_ids, return_inverse=True)
        items, item_row = np.unique(item_ids, return_inverse=True)
        columns: dict[str, np.ndarray] = {}

        def put(view: str, features: list[str], values: np.ndarray, rows: np.ndarray) -> None:
            for j, name in enumerate(features):
                columns[f"{view}__{name}"] = values[rows, j]

        stats = stat_features()
        user_values, user_present = self._read(stats_view("user"), ("user_id",), users, stats)
        item_values, _ = self._read(stats_view("item"), ("item_id",), items, stats)
        item_category, item_known = self.reader.read_ints(
            ITEM_ATTRIBUTES_VIEW, ("item_id",), items, [CATEGORY_FEATURE]
        )
        item_category = item_category[:, 0]
        categories = item_category[item_row]
        known_rows = item_known[item_row]
        put(stats_view("user"), stats, user_values, user_row)
        put(stats_view("item"), stats, item_values, item_row)
        # Unknown items have no category: a row of NaN (served as 0) after the known ones.
        category_ids, category_of_item = np.unique(item_category[item_known], return_inverse=True)
        category_values, _ = self._read(
            stats_view("category"), ("category_id",), category_ids, stats
        )
        category_values = np.vstack([category_values, np.full((1, len(stats)), np.nan)])
        category_rows = np.full(len(items), len(category_ids))
        category_rows[item_known] = category_of_item
        put(stats_view("category"), stats, category_values, category_rows[item_row])
        for pair, keys in PAIRS.items():
            second = item_ids if keys[1] == "item_id" else categories
            pairs, pair_row = pairs_of(np.asarray(user_ids, np.int64), second)
            values, _ = self._read(stats_view(pair), keys, pairs, pair_features())
            if keys[1] == "category_id":  # an unknown item's category is no category
                values[~np.isin(pairs[:, 1], category_ids)] = np.nan
            put(stats_view(pair), pair_features(), values, pair_row)
        moments = np.asarray(moments, np.int64)
        dense = dense_inputs(columns, moments, self.dense_order)
        sequence = np.zeros((len(item_ids), 0, 4), np.int64)
        if self.sequence_length:
            names = sequence_features(self.sequence_length)
            values, _ = self.reader.read_ints(SEQUENCE_VIEW, ("user_id",), users, names)
            put(SEQUENCE_VIEW, names, values, user_row)
            sequence = sequence_inputs(columns, moments, self.sequence_length)
        return OnlineFeatures(dense, sequence, categories, user_present[user_row], known_rows)
