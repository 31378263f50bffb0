"""DuckDB connections with bounded memory, so large inputs stream instead of exhausting RAM."""

from __future__ import annotations

import tempfile
from pathlib import Path

import duckdb

from shopguide.config import DataParams


def connect(params: DataParams) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute(f"SET memory_limit = '{params.duckdb_memory_limit}'")
    con.execute(f"SET threads = {params.duckdb_threads}")
    con.execute("SET preserve_insertion_order = false")
    # Spill where params say, by default the system temp dir, never into whatever directory
    # the step runs in.
    spill = params.duckdb_temp_directory or Path(tempfile.gettempdir()) / "shopguide-duckdb"
    con.execute(f"SET temp_directory = {sql_path(spill)}")
    return con


def sql_path(path: object) -> str:
    """Quote a path as a SQL string literal."""
    return "'" + str(path).replace("'", "''") + "'"
