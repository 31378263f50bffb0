"""Reading the declared tables: only the declared columns, each parsed as its declared type,
with an error naming the file, line and column of the first value that does not parse. What
the values must satisfy beyond their type (nulls, ranges, allowed values, unique keys) is the
Great Expectations suite's to judge (`shopguide.dataset.checks`), except for the malformed
rows a table allows (`max_malformed_fraction`: a cut-off last line), dropped here with a
warning naming their lines."""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from shopguide.dataset.schema import ColumnSpec, DatasetSchema, TableSpec
from shopguide.errors import ShopguideError

log = logging.getLogger(__name__)
SPLIT = "__split"  # the split of the file a row came from, for a table read from `files`
LINE = "__line"  # the row's line in its file (a header is line 1), or its row in a SQLite table


def table_path(schema: DatasetSchema, name: str, root: Path | None = None) -> Path:
    """The table's file (its first one, for a table of several)."""
    return table_paths(schema, name, root)[0][1]


def table_paths(
    schema: DatasetSchema, name: str, root: Path | None = None
) -> list[tuple[str, Path]]:
    out = []
    for split, file in schema.tables[name].paths().items():
        path = Path(file)
        out.append((split, path if path.is_absolute() else Path(root or schema.root) / path))
    return out


def _sqlite(path: Path, table: str) -> pd.DataFrame:
    """Every column of `table` (a table or view) in the SQLite database at `path`, opened
    read-only, in the database's own row order (rowid order for an ordinary table)."""
    with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as db:
        try:
            names = [
                r[0]
                for r in db.execute(
                    "SELECT name FROM sqlite_master WHERE type IN ('table', 'view') ORDER BY name"
                )
            ]
        except sqlite3.DatabaseError as exc:
            raise ShopguideError(f"{path}: not a SQLite database: {exc}") from exc
        if table not in names:
            raise ShopguideError(f"{path}: no table or view {table!r} (the database has {names})")
        quoted = table.replace('"', '""')
        return pd.read_sql_query(f'SELECT * FROM "{quoted}"', db)


def _raw(path: Path, spec: TableSpec) -> pd.DataFrame:
    if not path.is_file():
        raise ShopguideError(f"{path}: table file not found (dataset root wrong?)")
    try:
        if spec.sqlite_table:
            frame = _sqlite(path, spec.sqlite_table)
        elif path.suffix == ".parquet":
            frame = pd.read_parquet(path)
        else:
            headless = {} if spec.header else {"header": None, "names": list(spec.columns)}
            frame = pd.read_csv(
                path, dtype=str, keep_default_na=False, na_values=[""], index_col=False, **headless
            )
    except ShopguideError:
        raise
    except Exception as exc:  # pyarrow, the CSV parser and sqlite3 raise many kinds
        raise ShopguideError(f"{path}: unreadable table file: {exc}") from exc
    missing = [c for c in spec.columns if c not in frame.columns]
    if missing:
        raise ShopguideError(
            f"{_where(path, spec)}: no columns {missing} (declared in the schema; the "
            f"{'table' if spec.sqlite_table else 'file'} has {list(frame.columns)})"
        )
    return frame[list(spec.columns)]


def _where(path: Path, spec: TableSpec) -> str:
    return f"{path}: table {spec.sqlite_table!r}" if spec.sqlite_table else str(path)


def file_line(path: Path, lines: np.ndarray) -> Callable[[int, str], str]:
    """Where a value of a table file is: the file, the row's line (`lines`), the column."""
    return lambda row, column: f"{path}: line {lines[row]}, column {column}"


def table_row(path: Path, spec: TableSpec, lines: np.ndarray) -> Callable[[int, str], str]:
    """`file_line` for a CSV or Parquet file; a SQLite table's rows are counted from 1 in the
    database's order (`row N`)."""
    if not spec.sqlite_table:
        return file_line(path, lines)
    return lambda row, column: f"{_where(path, spec)}, row {lines[row]}, column {column}"


def _first_bad(
    locate: Callable[[int, str], str], column: str, raw: pd.Series, bad: np.ndarray, what: str
) -> None:
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ShopguideError(
            f"{locate(row, column)}: {raw.iloc[row]!r} is not {what} ({int(bad.sum())} such values)"
        )


def _parsed(raw: pd.Series, spec: ColumnSpec) -> tuple[pd.Series, np.ndarray, str]:
    """(values, mask of the present values that do not parse, what they should be)."""
    present = raw.notna().to_numpy()
    if spec.type == "numeric":
        values = pd.to_numeric(raw, errors="coerce")
        return values.astype(np.float64), present & values.isna().to_numpy(), "a number"
    if spec.type == "timestamp":  # epoch seconds, or date-time text
        numbers = pd.to_numeric(raw, errors="coerce")
        if (numbers.notna().to_numpy() == present).all():
            return numbers.astype(np.float64), np.zeros(len(raw), bool), "a timestamp"
        stamps = pd.to_datetime(raw, errors="coerce", format="mixed")
        seconds = stamps.to_numpy("datetime64[s]").astype(np.int64).astype(np.float64)
        values = pd.Series(np.where(stamps.notna(), seconds, np.nan), index=raw.index)
        return values, present & stamps.isna().to_numpy(), "a timestamp"
    return raw.astype("string"), np.zeros(len(raw), bool), "text"


def parse_column(
    locate: Callable[[int, str], str], name: str, raw: pd.Series, spec: ColumnSpec
) -> pd.Series:
    """`raw` as its declared type: numeric float64, timestamp epoch seconds (float64, NaN for
    none; epoch seconds or date-time text), the others strings. A value that does not parse
    is named by `locate(row, name)` (`file_line`: the file's line)."""
    values, bad, what = _parsed(raw, spec)
    _first_bad(locate, name, raw, bad, what)
    return values


def _malformed(
    raw: pd.DataFrame, parsed: dict, spec: TableSpec, path: Path, lines: np.ndarray
) -> np.ndarray:
    """(rows,) mask of the rows to drop: those that do not parse or miss a non-nullable value,
    when they are at most the table's `max_malformed_fraction` (named in a warning); else
    none (the parser or the table's suite names the first)."""
    bad = np.zeros(len(raw), bool)
    if spec.max_malformed_fraction == 0 or raw.empty:
        return bad
    for column, col in spec.columns.items():
        bad |= parsed[column][1]
        if not col.nullable:
            bad |= raw[column].isna().to_numpy()
    if not bad.any() or bad.sum() > spec.max_malformed_fraction * len(raw):
        return np.zeros(len(raw), bool)
    log.warning(
        "%s: dropped %d malformed rows (%s %s%s; max_malformed_fraction %g)",
        _where(path, spec),
        int(bad.sum()),
        "rows" if spec.sqlite_table else "lines",
        ", ".join(str(n) for n in lines[bad][:5]),
        ", ..." if bad.sum() > 5 else "",
        spec.max_malformed_fraction,
    )
    return bad


def read_table(schema: DatasetSchema, name: str, root: Path | None = None) -> pd.DataFrame:
    """Table `name` with its declared columns parsed, and each row's line in its file
    (`LINE`) and, for a table of `files`, its split (`SPLIT`). Each column is parsed once,
    twice only when malformed rows were dropped."""
    spec, parts = schema.tables[name], []
    first = 2 if spec.header and not spec.sqlite_table else 1
    for split, path in table_paths(schema, name, root):
        raw = _raw(path, spec)
        parsed = {c: _parsed(raw[c], s) for c, s in spec.columns.items()}
        lines = np.arange(len(raw)) + first
        keep = ~_malformed(raw, parsed, spec, path, lines)
        if not keep.all():  # parsed again without them: a column's format is read off its rows
            raw, lines = raw[keep].reset_index(drop=True), lines[keep]
            parsed = {c: _parsed(raw[c], s) for c, s in spec.columns.items()}
        where = table_row(path, spec, lines)
        for column, (_, bad, what) in parsed.items():
            _first_bad(where, column, raw[column], bad, what)
        part = pd.DataFrame({column: values for column, (values, _, _) in parsed.items()})
        part[LINE] = lines
        if spec.files:
            part[SPLIT] = split
        parts.append(part)
    return pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]
