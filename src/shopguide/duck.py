"""DuckDB connections with bounded memory, so large inputs stream instead of exhausting RAM."""

from __future__ import annotations

import contextlib
import errno
import tempfile
from collections.abc import Iterator
from pathlib import Path

import duckdb

from shopguide.config import DataParams
from shopguide.errors import ShopguideError


def connect(params: DataParams) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    try:
        con.execute(f"SET memory_limit = '{params.duckdb_memory_limit}'")
    except duckdb.Error as exc:
        raise ShopguideError(
            f"data.duckdb_memory_limit={params.duckdb_memory_limit!r}: {exc} (e.g. '4GB')"
        ) from exc
    con.execute(f"SET threads = {params.duckdb_threads}")
    con.execute("SET preserve_insertion_order = false")
    con.execute(f"SET temp_directory = {sql_path(spill_directory(params))}")
    return con


def spill_directory(params: DataParams) -> Path:
    """Where DuckDB spills: params' choice, by default the system temp dir, never into
    whatever directory the step runs in."""
    return params.duckdb_temp_directory or Path(tempfile.gettempdir()) / "shopguide-duckdb"


@contextlib.contextmanager
def resource_errors(params: DataParams, what: str, hint: str = "") -> Iterator[None]:
    """DuckDB's out-of-memory and I/O errors, and failed writes to the spill directory or a
    full disk (a full spill disk, an unusable spill directory) as a ShopguideError that names
    the limits to change, instead of a traceback."""
    try:
        yield
    except (duckdb.OutOfMemoryException, duckdb.IOException, OSError) as exc:
        if isinstance(exc, OSError) and not _is_spill_error(exc, params):
            raise
        raise ShopguideError(
            f"{what}: {exc}. DuckDB runs under data.duckdb_memory_limit "
            f"({params.duckdb_memory_limit}) and spills to {spill_directory(params)} "
            f"(data.duckdb_temp_directory): free space there or point it at a larger disk"
            f"{hint}."
        ) from exc


def _is_spill_error(exc: OSError, params: DataParams) -> bool:
    """A full disk, or any failure on a path in the spill directory (not, say, a missing input)."""
    text = str(exc)
    return (
        exc.errno == errno.ENOSPC or "No space left" in text or str(spill_directory(params)) in text
    )


def sql_path(path: object) -> str:
    """Quote a path as a SQL string literal."""
    return "'" + str(path).replace("'", "''") + "'"
