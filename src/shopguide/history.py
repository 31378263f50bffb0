"""Snapshot rows of the user's own history: per user x item and user x category pair, what they
did with it and when last (`<pair>_stats`), and per user the last events (`user_sequence`).

As in `shopguide.snapshots`, a row at time T holds events with ts < T only: events fall into
buckets of `interval` seconds and count from the bucket's end. Rows are written where a value
changes (every bucket with an event of the key; these tables have no trailing windows, so
nothing expires), plus an all-zero row per key at `origin`, the state before its first event.
DuckDB builds them (cumulative window aggregates, and list windows for the sequence) for the
keys of one hash pass at a time.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from shopguide.feature_spec import (
    BEHAVIOUR_CODES,
    OTHER_BEHAVIOUR_CODE,
    SEQUENCE_FIELDS,
    ViewSpec,
)
from shopguide.snapshots import TIMESTAMP


def view_schema(view: ViewSpec) -> pa.Schema:
    """The Parquet schema of a history view's snapshot rows."""
    fields = [(k, pa.int64()) for k in view.keys] + [("event_timestamp", TIMESTAMP)]
    fields += [(f, pa.float32()) for f in view.floats] + [(f, pa.int64()) for f in view.ints]
    return pa.schema(fields)


def _behaviour_code() -> str:
    cases = " ".join(f"WHEN '{b}' THEN {c}" for b, c in BEHAVIOUR_CODES.items())
    return f"CASE behavior {cases} ELSE {OTHER_BEHAVIOUR_CODE} END"


def pair_table(con, view: ViewSpec, events_sql: str, interval: int, origin: int) -> pa.Table:
    """Cumulative behaviour counts and last event times of every (user, item or category) pair
    in `events_sql`, one row per pair and bucket end T, plus the pair's row at `origin`."""
    keys = ", ".join(view.keys)
    behaviours = [f.removesuffix("_count") for f in view.floats]
    per_bucket = ", ".join(
        f"count(*) FILTER (WHERE behavior = '{b}') AS n_{b}, "
        f"max(ts) FILTER (WHERE behavior = '{b}') AS last_{b}"
        for b in behaviours
    )
    running = ", ".join(
        f"(sum(n_{b}) OVER w)::FLOAT AS {b}_count, "
        f"coalesce(max(last_{b}) OVER w, 0)::BIGINT AS {b}_last_ts"
        for b in behaviours
    )
    zeros = ", ".join(f"0::FLOAT AS {b}_count, 0::BIGINT AS {b}_last_ts" for b in behaviours)
    sql = f"""
        WITH buckets AS (
            SELECT {keys}, (ts // {interval} + 1) * {interval} AS T, {per_bucket}
            FROM {events_sql} GROUP BY ALL)
        SELECT {keys}, T, {running} FROM buckets
        WINDOW w AS (PARTITION BY {keys} ORDER BY T ROWS UNBOUNDED PRECEDING)
        UNION ALL
        SELECT DISTINCT {keys}, {origin} AS T, {zeros} FROM buckets
        ORDER BY {keys}, T"""
    return _as_view_table(con.execute(sql).to_arrow_table(), view)


def sequence_table(con, view: ViewSpec, events_sql: str, interval: int, origin: int) -> pa.Table:
    """Every user's last `length` events before each bucket end T (slot 0 the most recent;
    empty slots 0), one row per user and bucket end, plus the user's all-empty row at
    `origin`. Events of one second are ordered by behaviour code, then item."""
    (key,) = view.keys
    length = len(view.ints) // len(SEQUENCE_FIELDS)
    code = _behaviour_code()
    slots = ", ".join(
        f"coalesce(seq[-{k + 1}].{field}, 0)::BIGINT AS {field}_{k}"
        for k in range(length)
        for field in SEQUENCE_FIELDS
    )
    empty = ", ".join(
        f"0::BIGINT AS {field}_{k}" for k in range(length) for field in SEQUENCE_FIELDS
    )
    sql = f"""
        WITH ordered AS (
            SELECT {key}, (ts // {interval} + 1) * {interval} AS T,
                   {{'item': item_id, 'category': category_id, 'behavior': {code},
                     'ts': ts}} AS event,
                   row_number() OVER (PARTITION BY {key} ORDER BY ts, {code}, item_id) AS n
            FROM {events_sql}),
        windows AS (
            SELECT {key}, T, n,
                   list(event) OVER (PARTITION BY {key} ORDER BY n
                                     ROWS BETWEEN {length - 1} PRECEDING AND CURRENT ROW) AS seq
            FROM ordered)
        SELECT {key}, T, {slots} FROM windows
        QUALIFY row_number() OVER (PARTITION BY {key}, T ORDER BY n DESC) = 1
        UNION ALL
        SELECT DISTINCT {key}, {origin} AS T, {empty} FROM ordered
        ORDER BY {key}, T"""
    return _as_view_table(con.execute(sql).to_arrow_table(), view)


def _as_view_table(table: pa.Table, view: ViewSpec) -> pa.Table:
    """DuckDB's result (keys, T in epoch seconds, features) in the view's Parquet schema."""
    schema = view_schema(view)
    seconds = table.column("T").cast(pa.int64())
    micros = pc.multiply(seconds, 1_000_000).cast(pa.int64()).cast(TIMESTAMP)
    arrays = [table.column(k).cast(pa.int64()) for k in view.keys] + [micros]
    arrays += [table.column(f).cast(schema.field(f).type) for f in view.features]
    return pa.Table.from_arrays(arrays, schema=schema)
