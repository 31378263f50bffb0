"""Reading the declared tables: only the declared columns, each parsed as its declared type,
with an error naming the file, line and column of the first value that does not parse. What
the values must satisfy beyond their type (nulls, ranges, allowed values, unique keys) is the
Great Expectations suite's to judge (`shopguide.dataset.checks`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from shopguide.dataset.schema import ColumnSpec, DatasetSchema, TableSpec
from shopguide.errors import ShopguideError

SPLIT = "__split"  # the split of the file a row came from, for a table read from `files`
LINE = "__line"  # the row's line in its file (the header is line 1)


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


def _raw(path: Path, spec: TableSpec) -> pd.DataFrame:
    if not path.is_file():
        raise ShopguideError(f"{path}: table file not found (dataset root wrong?)")
    try:
        if path.suffix == ".parquet":
            frame = pd.read_parquet(path)
        else:
            frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    except Exception as exc:  # pyarrow and the CSV parser raise many kinds
        raise ShopguideError(f"{path}: unreadable table file: {exc}") from exc
    missing = [c for c in spec.columns if c not in frame.columns]
    if missing:
        raise ShopguideError(
            f"{path}: no columns {missing} (declared in the schema; the file has "
            f"{list(frame.columns)})"
        )
    return frame[list(spec.columns)]


def file_line(path: Path) -> Callable[[int, str], str]:
    """Where a value of a table file is: the file, its line (the header is line 1), column."""
    return lambda row, column: f"{path}: line {row + 2}, column {column}"


def _first_bad(
    locate: Callable[[int, str], str], column: str, raw: pd.Series, bad: np.ndarray, what: str
) -> None:
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ShopguideError(
            f"{locate(row, column)}: {raw.iloc[row]!r} is not {what} ({int(bad.sum())} such values)"
        )


def parse_column(
    locate: Callable[[int, str], str], name: str, raw: pd.Series, spec: ColumnSpec
) -> pd.Series:
    """`raw` as its declared type: numeric float64, timestamp epoch seconds (float64, NaN for
    none; epoch seconds or date-time text), the others strings. A value that does not parse
    is named by `locate(row, name)` (`file_line`: the file's line)."""
    present = raw.notna().to_numpy()
    if spec.type == "numeric":
        values = pd.to_numeric(raw, errors="coerce")
        _first_bad(locate, name, raw, present & values.isna().to_numpy(), "a number")
        return values.astype(np.float64)
    if spec.type == "timestamp":  # epoch seconds, or date-time text
        numbers = pd.to_numeric(raw, errors="coerce")
        if (numbers.notna().to_numpy() == present).all():
            return numbers.astype(np.float64)
        stamps = pd.to_datetime(raw, errors="coerce", format="mixed")
        _first_bad(locate, name, raw, present & stamps.isna().to_numpy(), "a timestamp")
        seconds = stamps.to_numpy("datetime64[s]").astype(np.int64).astype(np.float64)
        return pd.Series(np.where(stamps.notna(), seconds, np.nan), index=raw.index)
    return raw.astype("string")


def read_table(schema: DatasetSchema, name: str, root: Path | None = None) -> pd.DataFrame:
    """Table `name` with its declared columns parsed, and each row's line in its file
    (`LINE`) and, for a table of `files`, its split (`SPLIT`)."""
    spec, parts = schema.tables[name], []
    for split, path in table_paths(schema, name, root):
        raw = _raw(path, spec)
        where = file_line(path)
        part = pd.DataFrame({c: parse_column(where, c, raw[c], s) for c, s in spec.columns.items()})
        part[LINE] = np.arange(len(part)) + 2
        if spec.files:
            part[SPLIT] = split
        parts.append(part)
    return pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]
