"""Point-in-time behaviour features: compute them, register them in Feast, join and materialize.

Feature rows are snapshots at multiples of `snapshot_interval_hours`: a row at time T counts
events with ts < T only. Rows are written wherever a value changes (an event lands in a bucket
or leaves a trailing window), so Feast's point-in-time join (latest row at or before t0) never
sees an event at or after an exposure's t0.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
from feast import FeatureStore
from feast.repo_operations import parse_repo

from shopguide.config import BEHAVIOURS, Params
from shopguide.duck import connect, sql_path
from shopguide.errors import ShopguideError
from shopguide.exposures import window_events_sql
from shopguide.feature_spec import (
    ENTITIES,
    FEATURE_SERVICE,
    ITEM_ATTRIBUTES_VIEW,
    RATE_TASKS,
    WINDOW_HOURS,
    stats_view,
)
from shopguide.io import atomic_path

log = logging.getLogger(__name__)


def _stats_sql(key: str, events_sql: str, interval: int, origin: int) -> str:
    """SQL for one entity's snapshot rows (see module docstring).

    Every entity also gets an all-zero row at `origin` (before any event): the state before
    its first event, and the row Feast's file store needs to keep exposures of entities whose
    first event is their own t0 (otherwise it drops them from the join).
    """
    counts = ", ".join(f"count(*) FILTER (WHERE behavior = '{b}') AS {b}" for b in BEHAVIOURS)
    zeros = ", ".join(f"0 AS {b}" for b in BEHAVIOURS)
    expiries = "\n".join(
        f"UNION ALL SELECT {key}, T + {h * 3600} AS T, {zeros} FROM buckets" for h in WINDOW_HOURS
    )
    sums = ", ".join(f"sum({b}) AS {b}" for b in BEHAVIOURS)
    windows = []
    for h in WINDOW_HOURS:
        frame = f"RANGE BETWEEN {h * 3600 - interval} PRECEDING AND CURRENT ROW"
        windows += [
            f"sum({b}) OVER (PARTITION BY {key} ORDER BY T {frame})::FLOAT AS {b}_{h}h"
            for b in BEHAVIOURS
        ]
    windows += [
        f"sum({b}) OVER (PARTITION BY {key} ORDER BY T ROWS UNBOUNDED PRECEDING)::FLOAT AS {b}_all"
        for b in BEHAVIOURS
    ]
    rate_windows = [f"{WINDOW_HOURS[-1]}h", "all"]
    rates = ", ".join(
        f"({t}_{w} / ({'pv'}_{w} + 1.0))::FLOAT AS {t}_rate_{w}"
        for w in rate_windows
        for t in RATE_TASKS
    )
    return f"""
        WITH buckets AS (
            SELECT {key}, (ts // {interval} + 1) * {interval} AS T, {counts}
            FROM {events_sql} GROUP BY ALL
        ),
        origins AS (SELECT DISTINCT {key}, {origin} AS T, {zeros} FROM buckets),
        points AS (
            SELECT {key}, T, {sums}
            FROM (SELECT * FROM buckets UNION ALL SELECT * FROM origins {expiries})
            GROUP BY ALL
        ),
        windowed AS (SELECT {key}, T, {", ".join(windows)} FROM points)
        SELECT {key}, to_timestamp(T) AS event_timestamp, * EXCLUDE ({key}, T), {rates}
        FROM windowed ORDER BY {key}, T
    """


def write_feature_tables(events: Path, repo: Path, params: Params) -> dict[str, int]:
    """Write the Parquet sources of every feature view into `<repo>/data/`."""
    con = connect(params.data)
    events_sql = window_events_sql(events, params.protocol)
    interval = params.features.snapshot_interval_hours * 3600
    origin = params.protocol.window_start // interval * interval
    data_dir = repo / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    queries = {
        stats_view(entity): _stats_sql(key, events_sql, interval, origin)
        for entity, key in ENTITIES.items()
    }
    queries[ITEM_ATTRIBUTES_VIEW] = f"""
        SELECT item_id, arg_min(category_id, ts) AS category_id,
               to_timestamp({origin}) AS event_timestamp
        FROM {events_sql} GROUP BY item_id"""
    rows = {}
    for name, query in queries.items():
        with atomic_path(data_dir / f"{name}.parquet") as tmp:
            con.execute(f"COPY ({query}) TO {sql_path(tmp)} (FORMAT parquet)")
            count = f"SELECT count(*) FROM read_parquet({sql_path(tmp)})"
            (rows[name],) = con.execute(count).fetchone()
    log.info("feature rows per view: %s", rows)
    return rows


@contextlib.contextmanager
def _inside(repo: Path):
    """Feast resolves repo modules relative to the working directory, as its CLI does."""
    previous = Path.cwd()
    sys.path.insert(0, str(repo))
    os.chdir(repo)
    try:
        yield
    finally:
        os.chdir(previous)
        sys.path.remove(str(repo))


def open_store(repo: Path) -> FeatureStore:
    repo = Path(repo).resolve()
    if not (repo / "feature_store.yaml").is_file():
        raise ShopguideError(f"{repo}: not a Feast repo (no feature_store.yaml)")
    return FeatureStore(repo_path=str(repo))


def apply_repo(repo: Path) -> FeatureStore:
    """`feast apply`: register the definitions in `repo`'s Python files."""
    repo = Path(repo).resolve()
    store = open_store(repo)
    with _inside(repo):
        contents = parse_repo(repo)
    objects = [
        *contents.entities,
        *contents.data_sources,
        *contents.feature_views,
        *contents.feature_services,
    ]
    store.apply(objects)
    log.info("feast apply: %d objects registered in %s", len(objects), repo)
    return store


def historical_training_set(store: FeatureStore, exposures: Path, out: Path) -> int:
    """Join every exposure with its features as of t0 and write the training set."""
    entity_df = pd.read_parquet(exposures)
    if entity_df.empty:
        raise ShopguideError(f"{exposures}: no exposures to build a training set from")
    # Feast's file store de-duplicates on (join keys, timestamp) per view, which would drop all
    # but one exposure of a user at the same second. Microsecond tie-breaks keep every row and
    # cannot reach a later snapshot, since snapshots sit on whole-hour boundaries.
    tiebreak = entity_df.groupby("t0").cumcount().to_numpy()
    entity_df["event_timestamp"] = pd.to_datetime(
        entity_df["t0"].to_numpy() * 1_000_000 + tiebreak, unit="us", utc=True
    )
    # The DuckDB offline store resolves the sources' relative paths against the working dir.
    with _inside(Path(store.repo_path)):
        job = store.get_historical_features(
            entity_df=entity_df,
            features=store.get_feature_service(FEATURE_SERVICE),
            full_feature_names=True,
        )
        frame = job.to_df()
    # Stores differ in timestamp resolution (DuckDB: us); the training set is the same either way.
    frame["event_timestamp"] = frame["event_timestamp"].astype("datetime64[ns, UTC]")
    feature_cols = [c for c in frame.columns if "__" in c]
    frame[feature_cols] = frame[feature_cols].fillna(0.0).astype("float32")
    frame = frame.sort_values(["t0", "user_id", "item_id"]).reset_index(drop=True)
    with atomic_path(out) as tmp:
        frame.to_parquet(tmp, index=False)
    log.info("training set: %d exposures x %d features -> %s", len(frame), len(feature_cols), out)
    return len(frame)


def materialize_online(store: FeatureStore, events: Path, params: Params) -> datetime:
    """Load the latest feature row of every entity into the online store."""
    con = connect(params.data)
    (max_ts,) = con.execute(
        f"SELECT max(ts) FROM {window_events_sql(events, params.protocol)}"
    ).fetchone()
    interval = params.features.snapshot_interval_hours * 3600
    end = datetime.fromtimestamp(max_ts + max(WINDOW_HOURS) * 3600 + 2 * interval, tz=UTC)
    start = datetime.fromtimestamp(params.protocol.window_start, tz=UTC)
    store.materialize(start_date=start, end_date=end)
    log.info("materialized features up to %s into the online store", end.isoformat())
    return end


def build_features(events: Path, exposures: Path, repo: Path, out: Path, params: Params) -> dict:
    """The `features` step: tables, `feast apply`, training set, online materialization."""
    rows = write_feature_tables(events, repo, params)
    store = apply_repo(repo)
    n = historical_training_set(store, exposures, out)
    end = materialize_online(store, events, params)
    return {"feature_rows": rows, "training_rows": n, "materialized_until": end.isoformat()}
