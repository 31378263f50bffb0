"""Snapshot rows of one entity's behaviour features (the sources of the `*_stats` views).

A row at time T counts the entity's events with ts < T: over trailing windows of
`WINDOW_HOURS` and over all history, plus conversion rates. Events fall into buckets of
`interval` seconds; a bucket's events count from the bucket's end T and leave the h-hour window
at T + h hours, so rows are written exactly where a value changes: at every bucket end, every
expiry, and an all-zero row at `origin` (before any event: the state before the entity's first
event, and the row Feast's file store needs to keep exposures of entities whose first event is
their own t0).

DuckDB counts the buckets; numpy evaluates every count as a difference of cumulative sums
found by binary search over (entity, T) codes. At the 1 s grain this is several times faster
than DuckDB's window operator with one RANGE frame per feature.

A table is built in hash passes of its key, each pass written as its own row groups; the file's
metadata records the rows of each pass (`PASSES_KEY`), so the training-set join can read one
pass at a time and never holds or sorts a whole table.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from shopguide.config import BEHAVIOURS
from shopguide.feature_spec import (
    RATE_TASKS,
    WINDOW_HOURS,
    count_features,
    rate_features,
    window_names,
)

TIMESTAMP = pa.timestamp("us", tz="UTC")
_TIME_BITS = 34  # seconds after `origin` per entity code: over 500 years
PASSES_KEY = "shopguide.hash_passes"


def buckets_sql(key: str, events_sql: str, interval: int) -> str:
    """Per (entity, bucket end T): the events of each behaviour, ordered by entity and T."""
    counts = ", ".join(f"count(*) FILTER (WHERE behavior = '{b}') AS {b}" for b in BEHAVIOURS)
    return f"""
        SELECT {key}, (ts // {interval} + 1) * {interval} AS T, {counts}
        FROM {events_sql} GROUP BY ALL ORDER BY {key}, T
    """


def snapshot_table(con, key: str, events_sql: str, interval: int, origin: int) -> pa.Table:
    """The snapshot rows of the entities in `events_sql` (events at or after `origin`)."""
    frame = con.execute(buckets_sql(key, events_sql, interval)).fetchnumpy()
    keys = np.asarray(frame[key], dtype=np.int64)
    ends = np.asarray(frame["T"], dtype=np.int64)
    if len(ends) == 0:
        return table_schema(key).empty_table()
    if ends.min() <= origin:
        raise ValueError(f"events before the snapshot origin {origin}")
    start = np.r_[True, keys[1:] != keys[:-1]]
    entity = np.cumsum(start) - 1  # dense rank of the (sorted) key
    base = entity << _TIME_BITS
    codes = base + (ends - origin)
    shifts = [0] + [h * 3600 for h in WINDOW_HOURS]
    points = np.sort(np.concatenate([codes + s for s in shifts] + [base[start]]))
    points = points[np.r_[True, points[1:] != points[:-1]]]  # np.unique hashes: far slower
    point_base = points >> _TIME_BITS << _TIME_BITS

    def through(code: np.ndarray) -> np.ndarray:
        """Index into the cumulative sums: buckets with code <= `code`."""
        return np.searchsorted(codes, code, side="right")

    now = through(points)
    since = {"all": through(point_base - 1)}  # the entity's first bucket
    for h in WINDOW_HOURS:
        since[f"{h}h"] = through(np.maximum(points - h * 3600, point_base - 1))
    values: dict[str, np.ndarray] = {}
    for b in BEHAVIOURS:
        totals = np.r_[0, np.cumsum(frame[b], dtype=np.int64)]
        for window in window_names():
            values[f"{b}_{window}"] = totals[now] - totals[since[window]]
    for window in window_names()[-2:]:
        views = values[f"pv_{window}"] + 1.0
        for t in RATE_TASKS:
            values[f"{t}_rate_{window}"] = values[f"{t}_{window}"] / views
    schema = table_schema(key)
    arrays = [
        pa.array(keys[np.flatnonzero(start)][points >> _TIME_BITS]),
        pa.array(((points - point_base) + origin) * 1_000_000, TIMESTAMP),
    ]
    arrays += [pa.array(values[n].astype(np.float32)) for n in schema.names[2:]]
    return pa.Table.from_arrays(arrays, schema=schema)


def table_schema(key: str) -> pa.Schema:
    """The Parquet schema of the snapshot rows keyed by `key`."""
    fields = [(key, pa.int64()), ("event_timestamp", TIMESTAMP)]
    return pa.schema(fields + [(n, pa.float32()) for n in count_features() + rate_features()])


def pass_filter(key: str, passes: int, i: int) -> str:
    """SQL condition for the entities of hash pass `i` of `passes` (the same for any int width)."""
    return f"hash({key}::BIGINT) % {passes} = {i}"


def pass_metadata(rows_per_pass: list[int]) -> dict[str, str]:
    """Parquet key-value metadata recording the rows written by each hash pass, in order."""
    return {PASSES_KEY: json.dumps(rows_per_pass)}


def pass_row_groups(parquet: pq.ParquetFile) -> list[list[int]]:
    """The row groups of each hash pass; one pass of every row group for a file without the
    metadata (written by other tools). Each pass starts a row group of its own."""
    raw = (parquet.metadata.metadata or {}).get(PASSES_KEY.encode())
    groups = range(parquet.metadata.num_row_groups)
    if raw is None:
        return [list(groups)]
    ends = np.cumsum(json.loads(raw))
    starts = np.cumsum([0] + [parquet.metadata.row_group(g).num_rows for g in groups])[:-1]
    owner = np.searchsorted(ends, starts, side="right")
    return [[g for g in groups if owner[g] == i] for i in range(len(ends))]
