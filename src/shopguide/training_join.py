"""The training set's point-in-time join in DuckDB, view by view and hash pass by hash pass.

Each exposure takes, from every view of the feature service, the latest row of its entity with
event_timestamp <= t0 inside the view's TTL, exactly as Feast's point-in-time join does (snapshot
rows at T count events before T only, so a row at T == t0 holds nothing at or after t0); no row
gives zeros. One ASOF JOIN of the exposures against whole snapshot tables sorts them all at once:
at 50M events and the 1 s grain that spilled over 49 GB. Here a join only ever sees one hash
pass of one view (the row groups `shopguide.snapshots` wrote for it), and its results are
scattered into chunks of the output order, which are then assembled chunk by chunk. Memory and
spill stay bounded by a pass and a chunk, whatever the scale.
"""

from __future__ import annotations

import itertools
import logging
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from feast import FeatureStore
from feast.types import Int64

from shopguide.config import Params
from shopguide.duck import connect, spill_directory, sql_path
from shopguide.errors import ShopguideError
from shopguide.feature_spec import FEATURE_SERVICE, pass_key
from shopguide.io import ROW_GROUP_ROWS, atomic_path
from shopguide.logs import track
from shopguide.snapshots import TIMESTAMP, pass_filter, pass_row_groups

log = logging.getLogger(__name__)
# Exposures per output chunk: bounds the feature values assembled in memory at once.
CHUNK_ROWS = 1_000_000


@dataclass(frozen=True)
class FeatureColumns:
    """One view of the feature service as the join needs it."""

    name: str
    keys: tuple[str, ...]
    source: Path
    features: list[str]
    ints: frozenset[str]  # the integer features (times, ids); the others are float32
    ttl_s: int | None  # None: no limit (Feast's ttl 0)

    @property
    def columns(self) -> list[str]:
        return [f"{self.name}__{f}" for f in self.features]

    @property
    def pass_key(self) -> str:
        return pass_key(self.keys)


def service_views(store: FeatureStore) -> list[FeatureColumns]:
    """The views of the model's feature service, with their keys, features and types."""
    views = []
    for projection in store.get_feature_service(FEATURE_SERVICE).feature_view_projections:
        view = store.get_feature_view(projection.name)
        ttl = int(view.ttl.total_seconds()) if view.ttl else None
        source = Path(store.repo_path) / view.batch_source.path
        features = [f.name for f in projection.features]
        ints = frozenset(f.name for f in projection.features if f.dtype == Int64)
        keys = tuple(view.join_keys)
        views.append(FeatureColumns(projection.name, keys, source, features, ints, ttl))
    return views


def _pass_sql(view: FeatureColumns, ordered: Path, passes: int, i: int) -> str:
    """The features of the exposures in hash pass `i`, by their row in the output order."""
    t0 = "to_timestamp(e.t0)"
    in_ttl = f"s.event_timestamp >= {t0} - INTERVAL {view.ttl_s} SECOND" if view.ttl_s else "true"
    columns = ", ".join(
        f'coalesce(CASE WHEN {in_ttl} THEN s."{f}" END, 0)::'
        f'{"BIGINT" if f in view.ints else "FLOAT"} AS "{c}"'
        for f, c in zip(view.features, view.columns, strict=True)
    )
    where = f"WHERE {pass_filter(view.pass_key, passes, i)}" if passes > 1 else ""
    keys = ", ".join(view.keys)
    match = " AND ".join(f"e.{k} = s.{k}" for k in view.keys)
    return f"""
        SELECT e.file_row_number AS row_id, {columns}
        FROM (SELECT file_row_number, {keys}, t0
              FROM read_parquet({sql_path(ordered)}, file_row_number = true) {where}) e
        ASOF LEFT JOIN snap s ON {match} AND {t0} >= s.event_timestamp"""


def _join_view(
    con, view: FeatureColumns, ordered: Path, chunk_starts: np.ndarray, work: Path
) -> list[Path]:
    """Join one view pass by pass; append its values to one file per output chunk."""
    source = pq.ParquetFile(view.source)
    passes = pass_row_groups(source)
    paths = [work / f"{view.name}-{k}.parquet" for k in range(len(chunk_starts))]
    writers: dict[int, pq.ParquetWriter] = {}
    try:
        for i, groups in enumerate(passes):
            snap = source.read_row_groups(
                groups, columns=[*view.keys, "event_timestamp", *view.features]
            )
            con.register("snap", snap)
            reader = con.sql(_pass_sql(view, ordered, len(passes), i)).to_arrow_reader(CHUNK_ROWS)
            for batch in reader:
                rows = batch.column("row_id").to_numpy()
                order = np.argsort(rows)
                batch = batch.take(pa.array(order))
                chunk = np.searchsorted(chunk_starts, rows[order], side="right") - 1
                bounds = np.flatnonzero(np.r_[True, chunk[1:] != chunk[:-1], True])
                for a, b in itertools.pairwise(bounds):
                    k = int(chunk[a])
                    if k not in writers:
                        writers[k] = pq.ParquetWriter(paths[k], batch.schema)
                    writers[k].write_batch(batch.slice(a, b - a))
            con.unregister("snap")
    finally:
        for writer in writers.values():
            writer.close()
    return paths


def _chunk_values(path: Path, view: FeatureColumns, size: int) -> list[pa.Array]:
    """A view's values for the `size` rows of one output chunk, in output order."""
    table = pq.read_table(path)
    if table.num_rows != size:  # a LEFT ASOF JOIN gives every exposure exactly one row
        raise RuntimeError(f"{path}: {table.num_rows} rows for {size} exposures")
    order = pa.array(np.argsort(table.column("row_id").to_numpy()))
    return [table.column(c).take(order).combine_chunks() for c in view.columns]


def _assembled(
    source: pq.ParquetFile, group_bounds: np.ndarray, views: list[FeatureColumns], files: dict
) -> Iterator[pa.Table]:
    """The training set chunk by chunk: the ordered exposures, event_timestamp, features."""
    for k, (g0, g1) in enumerate(itertools.pairwise(group_bounds)):
        part = source.read_row_groups(range(g0, g1))
        t0 = part.column("t0").to_numpy().astype(np.int64)
        part = part.append_column("event_timestamp", pa.array(t0 * 1_000_000, TIMESTAMP))
        for v in views:
            values = _chunk_values(files[v.name][k], v, part.num_rows)
            for name, array in zip(v.columns, values, strict=True):
                part = part.append_column(name, array)
        yield part


def asof_training_set(store: FeatureStore, exposures: Path, out: Path, params: Params) -> int:
    """The training set of `features.feast_training_set`, in the same row order and dtypes,
    built within DuckDB's memory limit (Feast's file and DuckDB offline stores build the
    whole join in memory). Intermediate files go to DuckDB's spill directory."""
    con = connect(params.data)
    # A pass's hash filter makes DuckDB guess a few dozen exposures, and below its threshold
    # it runs the ASOF join as a nested loop over the whole pass: minutes instead of a second.
    con.execute("SET asof_loop_join_threshold = 0")
    (count,) = con.execute(f"SELECT count(*) FROM read_parquet({sql_path(exposures)})").fetchone()
    if count == 0:
        raise ShopguideError(f"{exposures}: no exposures to build a training set from")
    views = service_views(store)
    spill = spill_directory(params.data)
    spill.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=spill, prefix="training-join-") as tmp:
        work = Path(tmp)
        ordered = work / "exposures.parquet"
        con.execute(
            f"""COPY (SELECT * FROM read_parquet({sql_path(exposures)})
                      ORDER BY t0, user_id, item_id) TO {sql_path(ordered)}
                (FORMAT parquet, ROW_GROUP_SIZE {max(2048, CHUNK_ROWS // 8)})"""
        )
        source = pq.ParquetFile(ordered)
        sizes = [source.metadata.row_group(g).num_rows for g in range(source.num_row_groups)]
        offsets = np.cumsum([0, *sizes])
        # Output chunks are runs of whole row groups of the ordered exposures.
        cut = np.flatnonzero(np.diff(offsets // CHUNK_ROWS) > 0) + 1
        group_bounds = np.unique(np.r_[0, cut, len(sizes)])
        chunk_starts = offsets[group_bounds[:-1]]
        chunk_files = {
            v.name: _join_view(con, v, ordered, chunk_starts, work)
            for v in track(views, "training-set join", total=len(views))
        }
        parts = _assembled(source, group_bounds, views, chunk_files)
        first = next(parts)
        with atomic_path(out) as staged, pq.ParquetWriter(staged, first.schema) as writer:
            writer.write_table(first, row_group_size=ROW_GROUP_ROWS)
            for part in parts:
                writer.write_table(part, row_group_size=ROW_GROUP_ROWS)
    log.info("training set (DuckDB ASOF JOIN by pass): %d exposures -> %s", count, out)
    return count
