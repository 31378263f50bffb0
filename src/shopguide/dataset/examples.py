"""The point-in-time example table of a declared dataset: one row per unit row that survives the
joins and filters, at its moment t0, with its split, ids, features, task labels and history.

History counts an earlier example from the moment its value became known (the latest
`known_at` among the columns the value reads; t0 for a value known with its row), strictly
before the example's own t0: a review weighs on its seller's later orders only once it was
answered, a delivery once it happened."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from shopguide.dataset.encode import hash_values
from shopguide.dataset.schema import (
    DatasetSchema,
    EventSource,
    FilterSpec,
    HistorySpec,
    TaskSpec,
    ValueSpec,
)
from shopguide.dataset.tables import LINE, SPLIT, read_table
from shopguide.errors import ShopguideError
from shopguide.io import atomic_path, fingerprint

log = logging.getLogger(__name__)
UNIT_SECONDS = {"seconds": 1.0, "hours": 3600.0, "days": 86400.0}
ID_COLUMNS = {"user": "user_id", "item": "item_id", "category": "category_id"}
# In a model's directory: the sha256 of the example table it was trained on.
EXAMPLES_DIGEST = "examples.sha256"


def _qualified(frame: pd.DataFrame, table: str) -> pd.DataFrame:
    frame = frame.drop(columns=[LINE])
    return frame.rename(columns={c: f"{table}.{c}" for c in frame.columns if c != SPLIT})


Tables = dict[str, pd.DataFrame]


def table_reader(
    schema: DatasetSchema, root: Path | None = None, tables: Tables | None = None
) -> Callable[[str], pd.DataFrame]:
    """Reads each table once: `tables` holds those already parsed (e.g. by the checks), and
    the ones read here are added to it."""
    cache: Tables = {} if tables is None else tables

    def read(name: str) -> pd.DataFrame:
        if name not in cache:
            cache[name] = read_table(schema, name, root)
        return cache[name]

    return read


def joined_rows(
    schema: DatasetSchema, root: Path | None = None, tables: Tables | None = None
) -> pd.DataFrame:
    """The unit table with every join applied and the filters kept, columns qualified."""
    read = table_reader(schema, root, tables)
    frame = _qualified(read(schema.unit), schema.unit)
    for join in schema.joins:
        table = schema.tables[join.table]
        right = _qualified(read(join.table), join.table)
        right = right.drop(columns=[SPLIT], errors="ignore")
        keys = [f"{join.table}.{c}" for c in (join.right or table.key)]
        if join.order_by is not None:
            right = right.sort_values(f"{join.table}.{join.order_by}", kind="stable")
            right = right.drop_duplicates(keys, keep="last" if join.pick == "last" else "first")
        elif right.duplicated(keys).any():
            raise ShopguideError(
                f"{join.table}: several rows per join key {keys}; declare pick and order_by "
                "on its join"
            )
        frame = frame.merge(
            right,
            left_on=list(join.left),
            right_on=keys,
            how="inner" if join.required else "left",
            suffixes=("", "__dup"),
        )
    frame = kept(frame, schema.filters)
    if schema.first_per:
        ordered = frame.sort_values(schema.time, kind="stable") if schema.time else frame
        frame = frame.loc[ordered.drop_duplicates(list(schema.first_per)).index.sort_values()]
    return frame.reset_index(drop=True)


def kept(frame: pd.DataFrame, filters: tuple[FilterSpec, ...]) -> pd.DataFrame:
    """The rows of `frame` that pass every filter (the column set, in `in` if given, within
    the bounds if given)."""
    for f in filters:
        keep = frame[f.column].notna()
        if f.in_ is not None:
            keep &= frame[f.column].isin(f.in_)
        if f.at_least is not None or f.below is not None:
            low, high = f.bounds()
            keep &= (frame[f.column] >= low) & (frame[f.column] < high)
        frame = frame[keep]
    return frame


def evaluate(spec: ValueSpec, frame: pd.DataFrame, schema: DatasetSchema) -> pd.Series:
    """A declared value of each row: float64 for numbers, timestamps, differences and
    comparisons (NaN where an input is missing); the column as is for other types."""
    kind = schema.column(spec.column).type
    value = frame[spec.column]
    if spec.kind == "numeric" and kind not in ("numeric", "timestamp"):
        parsed = pd.to_numeric(value, errors="coerce")
        if (parsed.isna() & value.notna()).any():
            row = int(np.flatnonzero(parsed.isna() & value.notna())[0])
            raise ShopguideError(
                f"{schema.name}: {spec.column} read as a number, but example {row} holds "
                f"{value.iloc[row]!r}"
            )
        value, kind = parsed, "numeric"
    if spec.minus is None and spec.op is None and kind not in ("numeric", "timestamp"):
        return value
    value = _number(spec, frame, kind, value)
    if spec.transform == "log1p":
        value = np.log1p(value.clip(lower=0))
    return value if spec.fill is None else value.fillna(spec.fill)


def _number(spec: ValueSpec, frame: pd.DataFrame, kind: str, value: pd.Series) -> pd.Series:
    if spec.op in ("eq", "ne") and kind not in ("numeric", "timestamp"):
        other = frame[spec.other] if spec.other is not None else str(spec.value)
        same = (value.astype("string") == other).astype(np.float64)
        missing = value.isna() | (other.isna() if isinstance(other, pd.Series) else False)
        return (same if spec.op == "eq" else 1.0 - same).mask(missing)
    value = value.astype(np.float64)
    if spec.part is not None:
        stamps = pd.to_datetime(value, unit="s")
        parts = {
            "month": stamps.dt.month,
            "weekday": stamps.dt.weekday,
            "hour": stamps.dt.hour,
            "day_of_year": stamps.dt.dayofyear,
        }
        return parts[spec.part].astype(np.float64)
    if spec.minus is not None:
        scale = UNIT_SECONDS[spec.unit] if kind == "timestamp" else 1.0
        value = (value - frame[spec.minus].astype(np.float64)) / scale
    if spec.op is not None:
        other = (
            frame[spec.other].astype(np.float64) if spec.other is not None else float(spec.value)
        )
        compared = getattr(value, spec.op)(other).astype(np.float64)
        missing = value.isna() | (other.isna() if isinstance(other, pd.Series) else False)
        value = compared.mask(missing)
    return value


def known_times(spec: ValueSpec, frame: pd.DataFrame, schema: DatasetSchema) -> pd.Series:
    """When each row's value became known: the latest known_at of the columns it reads."""
    times = pd.Series(moments(frame, schema), index=frame.index)
    for ref in spec.columns():
        at = schema.known_at(ref)
        if at is not None:
            times = np.fmax(times, frame[at].astype(np.float64)).where(frame[at].notna())
    return times


def moments(frame: pd.DataFrame, schema: DatasetSchema) -> np.ndarray:
    """(rows,) float64 t0: the time column's seconds, or the row's position without one."""
    if schema.time is None:
        return np.arange(len(frame), dtype=np.float64)
    return frame[schema.time].to_numpy(np.float64)


def splits(frame: pd.DataFrame, schema: DatasetSchema) -> np.ndarray:
    """(rows,) "train"/"test": by the file a row came from, or by the split column."""
    if schema.split is None:
        return frame[SPLIT].to_numpy(object)
    at = schema.split.start()
    column = frame[schema.split.column or schema.time].to_numpy(np.float64)
    return np.where(column >= at, "test", "train")


def id_values(frame: pd.DataFrame, refs: tuple[str, ...]) -> np.ndarray:
    """(rows,) int64 ids: a column's values hashed, several columns' values hashed together,
    or 0 for every row when no column plays the role."""
    if not refs:
        return np.zeros(len(frame), np.int64)
    if len(refs) == 1:
        return hash_values(frame[refs[0]].astype("string"))
    first, *others = (frame[r].astype("string").fillna("") for r in refs)
    return hash_values(first.str.cat(others, sep="\x1f"))


def _running(event_keys: np.ndarray, known: np.ndarray, values: np.ndarray | None) -> pd.DataFrame:
    """The rows (hashed key, moment, value; those without a moment or value left out) in time
    order, with each key's running count, sum and latest moment."""
    present = ~np.isnan(known)
    if values is not None:
        present &= ~np.isnan(values)
    events = pd.DataFrame(
        {
            "key": event_keys[present],
            "moment": known[present],
            "value": values[present] if values is not None else 1.0,
        }
    ).sort_values(["key", "moment"], kind="stable")
    events["count"] = events.groupby("key").cumcount() + 1.0
    events["sum"] = events.groupby("key")["value"].cumsum()
    events = events.sort_values("moment", kind="stable")
    events["last"] = events["moment"]
    return events


def _as_of(events: pd.DataFrame, keys: np.ndarray, moments: np.ndarray, inclusive: bool):
    """The running totals of each query's key over the rows before `moments` (`inclusive`:
    at or before), in the queries' order; no row: count and sum 0, last NaN."""
    queries = pd.DataFrame({"key": keys, "moment": moments, "row": np.arange(len(keys))})
    matched = pd.merge_asof(
        queries.sort_values("moment", kind="stable"),
        events[["key", "moment", "count", "sum", "last"]],
        on="moment",
        by="key",
        allow_exact_matches=inclusive,
        direction="backward",
    )
    return matched.sort_values("row").fillna({"count": 0.0, "sum": 0.0})


def history_feature(
    spec: HistorySpec,
    keys: np.ndarray,
    t0: np.ndarray,
    event_keys: np.ndarray,
    known: np.ndarray,
    values: np.ndarray | None,
) -> np.ndarray:
    """(rows,) float64: `spec.fn` for each example (hashed key `keys`, moment `t0`) over the
    rows (`event_keys`, known at `known`, `values`) with its key known strictly before t0
    (with `spec.window_s`: and at or after t0 - window_s). A count or sum over nothing is 0;
    a mean or age over nothing is NaN."""
    events = _running(event_keys, known, values)
    now = _as_of(events, keys, t0, inclusive=False)
    count, total = now["count"].to_numpy(), now["sum"].to_numpy()
    if spec.fn == "age":
        last = now["last"].to_numpy()
        if spec.window_s:
            last = np.where(t0 - last <= spec.window_s, last, np.nan)
        return t0 - last
    if spec.window_s:
        before = _as_of(events, keys, t0 - spec.window_s, inclusive=False)
        count = count - before["count"].to_numpy()
        total = total - before["sum"].to_numpy()
    if spec.fn == "count":
        return count
    if spec.fn == "sum":
        return total
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _moment_column(spec: EventSource, schema: DatasetSchema) -> str:
    """The column of `spec.table` holding each row's moment (`at`, else its known_at)."""
    return spec.at or schema.tables[spec.table].known_at


def source_rows(
    spec: EventSource, schema: DatasetSchema, read: Callable[[str], pd.DataFrame]
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """(the rows of `spec.table` that pass `where`, columns qualified; their hashed keys;
    their moments)."""
    rows = kept(_qualified(read(spec.table), spec.table), spec.where)
    at = f"{spec.table}.{_moment_column(spec, schema)}"
    return rows, id_values(rows, spec.source_keys()), rows[at].to_numpy(np.float64)


def next_label(
    task: TaskSpec,
    schema: DatasetSchema,
    frame: pd.DataFrame,
    read: Callable[[str], pd.DataFrame],
) -> np.ndarray:
    """(rows,) float64 label of a `next` task: how many matching rows follow each example's
    t0 within the horizon (binary: whether any), NaN where the horizon passes the table's
    last moment (or the `below` bound of its time in `where`) or, for a training example of
    a time split, the test period's start."""
    spec = task.next_
    every = read(spec.table)[_moment_column(spec, schema)].to_numpy(np.float64)
    end = float(np.nanmax(every)) if len(every) else -np.inf
    at = f"{spec.table}.{_moment_column(spec, schema)}"
    for f in spec.where:  # a window the rows are cut to ends the data there
        if f.column == at and f.below is not None:
            end = min(end, f.bounds()[1])
    t0 = moments(frame, schema)
    if schema.split is not None and schema.split.column in (None, schema.time):
        # A training label must not read the test period: its horizon ends at the split.
        start = schema.split.start()
        end = np.where(t0 < start, min(start, end), end)
    _, event_keys, event_moments = source_rows(spec, schema, read)
    events = _running(event_keys, event_moments, None)
    keys = id_values(frame, spec.by)
    horizon = t0 + spec.within_s if spec.within_s else np.full(len(t0), np.inf)
    until = _as_of(events, keys, horizon, inclusive=True)["count"].to_numpy()
    count = until - _as_of(events, keys, t0, inclusive=True)["count"].to_numpy()
    label = count if task.type == "regression" else (count > 0).astype(np.float64)
    return np.where(horizon > end, np.nan, label) if spec.within_s else label


def history_rows(
    spec: HistorySpec,
    schema: DatasetSchema,
    frame: pd.DataFrame,
    values: dict,
    read: Callable[[str], pd.DataFrame],
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(hashed keys, known-at seconds, values) of the rows `spec` aggregates: the examples
    (`frame`, their `values`), or `spec.table`'s rows (`read` gives them) after `where`."""
    if spec.table is None:
        specs = {**schema.features, **schema.tasks}
        known = (
            known_times(specs[spec.of], frame, schema).to_numpy(np.float64)
            if spec.of is not None
            else moments(frame, schema)
        )
        own = np.asarray(values[spec.of], np.float64) if spec.of is not None else None
        return id_values(frame, spec.by), known, own
    rows, keys, known = source_rows(spec, schema, read)
    own = rows[f"{spec.table}.{spec.of}"].to_numpy(np.float64) if spec.of is not None else None
    return keys, known, own


def served_values(schema: DatasetSchema, frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """What the model reads of the joined rows `frame` besides history: the ids (int64), t0
    (epoch seconds) and every feature; the same offline and online."""
    t0 = pd.Series(moments(frame, schema), index=frame.index)
    if t0.isna().any():
        row = int(np.flatnonzero(t0.isna())[0])
        raise ShopguideError(f"{schema.name}: example {row} has no time ({schema.time} is empty)")
    out = {ID_COLUMNS[role]: id_values(frame, refs) for role, refs in schema.ids}
    out["t0"] = t0.to_numpy(np.int64)
    return out | {n: np.asarray(evaluate(s, frame, schema)) for n, s in schema.features.items()}


def unit_values(
    schema: DatasetSchema, frame: pd.DataFrame, read: Callable[[str], pd.DataFrame]
) -> dict[str, np.ndarray]:
    """`served_values`, the split and every task's label (NaN when unknown); `read` gives
    the tables a `next` task reads."""
    out = served_values(schema, frame) | {"split": splits(frame, schema)}
    for name, spec in schema.tasks.items():
        label = (
            evaluate(spec, frame, schema)
            if spec.next_ is None
            else next_label(spec, schema, frame, read)
        )
        out[name] = np.asarray(label)
    return out


def history_events(
    schema: DatasetSchema, frame: pd.DataFrame, values: dict, read: Callable[[str], pd.DataFrame]
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
    """`history_rows` of each declared history feature, in order."""
    return [history_rows(h, schema, frame, values, read) for h in schema.history]


def build_examples(
    schema: DatasetSchema, root: Path | None = None, tables: Tables | None = None
) -> pd.DataFrame:
    """The example table: user_id, item_id, category_id (int64), t0 (epoch seconds), split,
    every feature (numbers float64, categorical values and text as strings), every task's label
    (float64, NaN when unknown) and every history feature. `tables`: tables already parsed."""
    tables = {} if tables is None else tables
    frame = joined_rows(schema, root, tables)
    read = table_reader(schema, root, tables)
    out = unit_values(schema, frame, read)
    t0 = out["t0"].astype(np.float64)
    events = history_events(schema, frame, out, read)
    for h, (event_keys, known, own) in zip(schema.history, events, strict=True):
        out[h.feature] = history_feature(h, id_values(frame, h.by), t0, event_keys, known, own)
    examples = pd.DataFrame(out)
    if examples.empty:
        raise ShopguideError(f"{schema.name}: no examples left after the joins and filters")
    log.info(
        "%s: %d examples (%d train, %d test)",
        schema.name,
        len(examples),
        int((examples["split"] == "train").sum()),
        int((examples["split"] == "test").sum()),
    )
    return examples


def write_examples(examples: pd.DataFrame, path: Path) -> str:
    """Write the example table (Parquet, atomically); returns the file's sha256."""
    with atomic_path(path) as tmp:
        examples.to_parquet(tmp, index=False)
    return fingerprint(path)


def read_examples(path: Path, model_dir: Path) -> pd.DataFrame:
    """The example table `model_dir`'s model was trained on, refused when `path` holds
    another (the data or the schema changed since, or another model's training wrote it)."""
    recorded = Path(model_dir) / EXAMPLES_DIGEST
    if not Path(path).is_file():
        raise ShopguideError(f"{path}: no example table (run `shopguide dataset train`)")
    if not recorded.is_file() or recorded.read_text().strip() != fingerprint(path):
        raise ShopguideError(
            f"{path}: not the example table the model in {model_dir} was trained on; train "
            "again, or pass the examples its training wrote (--examples)"
        )
    return pd.read_parquet(path)
