"""Point-in-time behaviour features: compute them, register them in Feast, join and materialize.

Feature rows are snapshots at multiples of each view's `features.snapshot_interval_s` (1 s by
default, so exact as of t0): a row at time T counts events with ts < T only (built by
`shopguide.snapshots` and `shopguide.history`). Rows are written wherever a value changes (an
event lands in a bucket or leaves a trailing window), so Feast's point-in-time join (latest row
at or before t0) never sees an event at or after an exposure's t0.

Feast holds the definitions (registry) and serves the online store. The training set is that
point-in-time join, by default run as DuckDB ASOF JOINs on the same Parquet sources, one hash
pass at a time (`shopguide.training_join`, `features.offline_join: duckdb_asof`; tested equal to
Feast's get_historical_features, which `feast` selects), because Feast's file and DuckDB offline
stores build it in memory.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from feast import FeatureStore
from feast.constants import FEAST_FS_YAML_FILE_PATH_ENV_NAME
from feast.repo_operations import parse_repo

from shopguide.config import Params
from shopguide.duck import connect, resource_errors, sql_path
from shopguide.errors import ShopguideError
from shopguide.exposures import window_events_sql
from shopguide.feature_spec import (
    ENTITIES,
    FEATURE_SERVICE,
    ITEM_ATTRIBUTES_VIEW,
    SEQUENCE_VIEW,
    SPEC_FILE,
    WINDOW_HOURS,
    ViewSpec,
    feature_views,
    pass_key,
)
from shopguide.history import pair_table, sequence_table, view_schema
from shopguide.io import ROW_GROUP_ROWS, atomic_path, write_json
from shopguide.logs import track
from shopguide.online_write import online_writer
from shopguide.snapshots import pass_filter, pass_metadata, snapshot_table, table_schema
from shopguide.training_join import asof_training_set, service_views

log = logging.getLogger(__name__)
# Events per pass of the snapshot-table build: bounds the snapshot rows held in memory at once.
EVENTS_PER_PASS = 2_000_000
# Entities per write into the online store: bounds the values built at once.
ONLINE_WRITE_ROWS = 100_000


def first_snapshot(params: Params) -> int:
    """Midnight (UTC) before the window: at or before every entity's first snapshot row, since
    every interval divides a day."""
    return params.protocol.window_start // 86400 * 86400


def write_feature_tables(events: Path, repo: Path, params: Params) -> dict[str, int]:
    """Write the Parquet sources of every feature view into `<repo>/data/`, and the spec the
    repo's definitions read (the sequence length)."""
    con = connect(params.data)
    events_sql = window_events_sql(events, params.protocol)
    data_dir = repo / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    (events_count,) = con.execute(f"SELECT count(*) FROM {events_sql}").fetchone()
    passes = max(1, -(-events_count // EVENTS_PER_PASS))
    views = feature_views(params.features.sequence_length)
    rows = {}
    for view in track(views, "feature tables", total=len(views)):
        interval = params.features.interval(view.grain)
        origin = params.protocol.window_start // interval * interval
        key = pass_key(view.keys)
        schema = table_schema(key) if view.grain in ENTITIES else view_schema(view)
        per_pass = []
        with (
            atomic_path(data_dir / f"{view.name}.parquet") as tmp,
            pq.ParquetWriter(tmp, schema) as writer,
        ):
            # Each pass takes the keys of one hash bucket, so a pass's rows fit in memory.
            for i in range(passes):
                subset = f"(SELECT * FROM {events_sql} WHERE {pass_filter(key, passes, i)})"
                table = _view_table(con, view, subset, interval, origin)
                if table.num_rows:
                    writer.write_table(table)
                per_pass.append(table.num_rows)
            writer.add_key_value_metadata(pass_metadata(per_pass))
        rows[view.name] = sum(per_pass)
    with atomic_path(data_dir / f"{ITEM_ATTRIBUTES_VIEW}.parquet") as tmp:
        attributes = f"""
            SELECT item_id, arg_min(category_id, ts) AS category_id,
                   to_timestamp({first_snapshot(params)}) AS event_timestamp
            FROM {events_sql} GROUP BY item_id"""
        con.execute(f"COPY ({attributes}) TO {sql_path(tmp)} (FORMAT parquet)")
        rows[ITEM_ATTRIBUTES_VIEW] = _rows(con, tmp)
    write_json(data_dir / SPEC_FILE, {"sequence_length": params.features.sequence_length})
    log.info("feature rows per view: %s (%d pass(es) per view)", rows, passes)
    return rows


def _view_table(con, view: ViewSpec, events_sql: str, interval: int, origin: int) -> pa.Table:
    """The snapshot rows of one view for the events of one pass."""
    if view.grain in ENTITIES:
        return snapshot_table(con, view.keys[0], events_sql, interval, origin)
    if view.name == SEQUENCE_VIEW:
        return sequence_table(con, view, events_sql, interval, origin)
    return pair_table(con, view, events_sql, interval, origin)


def _rows(con, parquet: Path) -> int:
    (count,) = con.execute(f"SELECT count(*) FROM read_parquet({sql_path(parquet)})").fetchone()
    return count


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


def _feast_repo(path: Path) -> Path:
    """`path`, resolved, if it is a Feast repo; else a clear error. Its configuration is its
    feature_store.yaml, or the file Feast's FEAST_FS_YAML_FILE_PATH names (on the cluster: the
    overlay's ConfigMap, the same for the pipeline steps and the predictor)."""
    repo = Path(path).resolve()
    named = os.environ.get(FEAST_FS_YAML_FILE_PATH_ENV_NAME)
    if named:
        if not Path(named).is_file():
            raise ShopguideError(f"{FEAST_FS_YAML_FILE_PATH_ENV_NAME}={named}: no such file")
        if not repo.is_dir():
            raise ShopguideError(f"{repo}: no Feast repo there")
    elif not (repo / "feature_store.yaml").is_file():
        raise ShopguideError(f"{repo}: not a Feast repo (no feature_store.yaml)")
    return repo


def fresh_repo(template: Path, dest: Path) -> Path:
    """A Feast repo at `dest` with `template`'s definitions (its Python files and
    feature_store.yaml) and none of its data or registry: for runs that must not share them."""
    template = _feast_repo(template)
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    for source in [template / "feature_store.yaml", *template.glob("*.py")]:
        shutil.copy(source, dest / source.name)
    return dest


def open_store(repo: Path) -> FeatureStore:
    return FeatureStore(repo_path=str(_feast_repo(repo)))


def apply_repo(repo: Path) -> FeatureStore:
    """`feast apply`: register the definitions in `repo`'s Python files."""
    repo = Path(repo).resolve()
    store = open_store(repo)
    # Repo modules (data_sources, ...) imported from another repo earlier in this process would
    # be reused by name; the Feast CLI never sees that, as each run is a new process.
    for module in repo.glob("*.py"):
        sys.modules.pop(module.stem, None)
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


def feast_training_set(store: FeatureStore, exposures: Path, out: Path) -> int:
    """Join every exposure with its features as of t0 through Feast's offline store."""
    entity_df = pd.read_parquet(exposures)
    if entity_df.empty:
        raise ShopguideError(f"{exposures}: no exposures to build a training set from")
    # Feast's file store de-duplicates on (join keys, timestamp) per view, which would drop all
    # but one exposure of a user at the same second. Microsecond tie-breaks keep every row and
    # cannot reach a later snapshot: snapshots sit on whole seconds, and fewer than a million
    # exposures share a second.
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
    # The tie-breaks were for the join only; stores differ in timestamp resolution.
    frame["event_timestamp"] = pd.to_datetime(frame["t0"], unit="s", utc=True).astype(
        "datetime64[us, UTC]"
    )
    for view in service_views(store):
        for feature, column in zip(view.features, view.columns, strict=True):
            kind = "int64" if feature in view.ints else "float32"
            frame[column] = frame[column].fillna(0).astype(kind)
    feature_cols = [c for c in frame.columns if "__" in c]
    frame = frame.sort_values(["t0", "user_id", "item_id"]).reset_index(drop=True)
    with atomic_path(out) as tmp:
        frame.to_parquet(tmp, index=False, row_group_size=ROW_GROUP_ROWS)
    log.info("training set: %d exposures x %d features -> %s", len(frame), len(feature_cols), out)
    return len(frame)


def training_set(store: FeatureStore, exposures: Path, out: Path, params: Params) -> int:
    """The point-in-time training set by the engine `features.offline_join` names."""
    if params.features.offline_join == "duckdb_asof":
        return asof_training_set(store, exposures, out, params)
    return feast_training_set(store, exposures, out)


def ranking_set(store: FeatureStore, queries: Path, out: Path, params: Params) -> int:
    """Every query candidate with its features as of the query's moment: the same join as the
    training set's. A dataset without queries gets an empty ranking set."""
    if pq.ParquetFile(queries).metadata.num_rows == 0:
        with atomic_path(out) as tmp:
            pq.write_table(pq.read_table(queries), tmp)
        return 0
    return training_set(store, queries, out, params)


def materialize_online(
    store: FeatureStore, events: Path, params: Params, bulk_sqlite: bool = True
) -> datetime:
    """Write the latest feature row of every entity into the online store.

    What `feast materialize` stores, but picked by a DuckDB aggregate within its memory limit
    and written in batches: Feast's materialize loads whole feature tables into pandas (over
    6.9 GB at 10M events, docs/benchmarks.md). A SQLite store is written in bulk in Feast's
    layout (`online_write.SqliteBulkWriter`); any other store, or `bulk_sqlite=False`, through
    Feast's own write path.
    """
    con = connect(params.data)
    ((max_ts,),) = con.execute(
        f"SELECT max(ts) FROM {window_events_sql(events, params.protocol)}"
    ).fetchall()
    views = [v for v in store.list_feature_views() if v.online]
    interval = max(
        params.features.interval(v.grain) for v in feature_views(params.features.sequence_length)
    )
    end = datetime.fromtimestamp(max_ts + max(WINDOW_HOURS) * 3600 + 2 * interval, tz=UTC)
    start = datetime.fromtimestamp(first_snapshot(params), tz=UTC)
    repo = Path(store.repo_path)
    with online_writer(store, bulk_sqlite) as write:
        for view in track(views, "online store", total=len(views)):
            keys = ", ".join(view.join_keys)
            latest = f"""
                SELECT {keys}, arg_max(COLUMNS(* EXCLUDE ({keys})), event_timestamp)
                FROM read_parquet({sql_path(repo / view.batch_source.path)})
                WHERE event_timestamp >= '{start.isoformat()}'
                  AND event_timestamp < '{end.isoformat()}'
                GROUP BY {keys}"""
            for batch in con.sql(latest).to_arrow_reader(ONLINE_WRITE_ROWS):
                write(view, batch)
    log.info("wrote features up to %s into the online store", end.isoformat())
    return end


def build_features(
    events: Path,
    exposures: Path,
    queries: Path,
    repo: Path,
    out: Path,
    ranking_out: Path,
    params: Params,
) -> dict:
    """The `features` step: tables, `feast apply`, the training set (the labelled examples)
    and the ranking set (taobao-rank-v1's queries' candidates), both joined point-in-time, and
    the online store; with the wall seconds of each part (protocol synth-scale reports them)."""
    clock = time.perf_counter()
    seconds = {}

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[name], clock = round(now - clock, 1), now

    # At the 1 s grain the tables hold about three rows per event and entity (50M events:
    # 388M rows, 6.6 GB), and DuckDB spills what exceeds its memory limit.
    hint = "; a coarser features.snapshot_interval_s makes smaller tables"
    with resource_errors(params.data, "features", hint):
        rows = write_feature_tables(events, repo, params)
        store = apply_repo(repo)
        lap("tables_and_apply")
        n = training_set(store, exposures, out, params)
        lap("training_set")
        ranking_rows = ranking_set(store, queries, ranking_out, params)
        lap("ranking_set")
        end = materialize_online(store, events, params)
        lap("online_store")
    return {
        "feature_rows": rows,
        "training_rows": n,
        "ranking_rows": ranking_rows,
        "materialized_until": end.isoformat(),
        "offline_join": params.features.offline_join,
        "seconds": seconds,
    }
