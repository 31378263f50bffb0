"""Raw Taobao UserBehavior CSV -> canonical Parquet event table.

DuckDB streams the CSV, so the full public file (about 100 million rows) is read in bounded
memory. Lines that do not parse into five fields with integer ids and timestamp are dropped as
the protocol says, but only up to `data.max_malformed_fraction`: past that the input is judged
broken and the step fails, naming the file and the first offending rows.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import duckdb

from shopguide.config import DataParams
from shopguide.duck import connect, sql_path
from shopguide.errors import ShopguideError
from shopguide.io import atomic_path

log = logging.getLogger(__name__)

EVENT_COLUMNS = {
    "user_id": "BIGINT",
    "item_id": "BIGINT",
    "category_id": "BIGINT",
    "behavior": "VARCHAR",
    "ts": "BIGINT",
}
MAX_EXAMPLES = 5


@dataclass(frozen=True)
class IngestSummary:
    source: str
    rows: int
    malformed_rows: int
    malformed_examples: list[str]
    min_ts: int
    max_ts: int


def _describe_rejects(con) -> tuple[int, list[str]]:
    # one line can fail on several fields: count lines, not errors
    (count,) = con.execute("SELECT count(DISTINCT (file_id, line)) FROM reject_errors").fetchone()
    rows = con.execute(
        f"""SELECT line, column_name, error_type, csv_line, error_message
            FROM reject_errors ORDER BY line LIMIT {MAX_EXAMPLES}"""
    ).fetchall()
    examples = [
        f"line {line}: {etype.lower()} in column '{col}' ({msg.splitlines()[0]}): {raw!r}"
        for line, col, etype, raw, msg in rows
    ]
    return count, examples


def require_file(source: Path, what: str) -> Path:
    """The raw file, or a clear error when it is missing or empty."""
    source = Path(source)
    if not source.is_file():
        raise ShopguideError(f"{source}: raw events file not found (set data.raw_path)")
    if source.stat().st_size == 0:
        raise ShopguideError(f"{source}: file is empty, expected {what}")
    return source


def check_rejects(
    con, source: Path, rows: int, expected: str, params: DataParams
) -> tuple[int, list[str]]:
    """Fail on no valid rows or too many malformed ones (DuckDB `store_rejects` table); return
    the malformed count and the first examples."""
    bad, examples = _describe_rejects(con)
    total = rows + bad
    if rows == 0:
        detail = "\n  ".join(examples) or "no data rows"
        raise ShopguideError(f"{source}: no valid rows (expected {expected})\n  {detail}")
    if bad / total > params.max_malformed_fraction:
        detail = "\n  ".join(examples)
        raise ShopguideError(
            f"{source}: {bad} of {total} rows are malformed, over "
            f"data.max_malformed_fraction={params.max_malformed_fraction}; first ones:\n"
            f"  {detail}"
        )
    if bad:
        log.warning("%s: dropped %d malformed rows, e.g. %s", source, bad, examples[0])
    return bad, examples


def ingest_taobao(source: Path, out: Path, params: DataParams) -> IngestSummary:
    """Parse `source` into `out` (Parquet) atomically and return what was read."""
    source = require_file(source, "Taobao UserBehavior rows")
    con = connect(params)
    columns = "{" + ", ".join(f"'{k}': '{v}'" for k, v in EVENT_COLUMNS.items()) + "}"
    expected = "5 columns user_id,item_id,category_id,behavior_type,timestamp"
    with atomic_path(out) as tmp:
        try:
            con.execute(
                f"""COPY (
                        SELECT * FROM read_csv({sql_path(source)}, header = false, delim = ',',
                            auto_detect = false, columns = {columns}, store_rejects = true,
                            null_padding = false)
                    ) TO {sql_path(tmp)} (FORMAT parquet, COMPRESSION zstd)"""
            )
        except (duckdb.InvalidInputException, duckdb.ConversionException) as exc:
            raise ShopguideError(
                f"{source}: not a plain-text CSV of {expected} (compressed or binary?): "
                f"{str(exc).splitlines()[0]}"
            ) from exc
        rows, min_ts, max_ts = con.execute(
            f"SELECT count(*), min(ts), max(ts) FROM read_parquet({sql_path(tmp)})"
        ).fetchone()
        bad, examples = check_rejects(con, source, rows, expected, params)
    summary = IngestSummary(str(source), rows, bad, examples, min_ts, max_ts)
    log.info("ingested %d events from %s into %s", rows, source, out)
    return summary


def summary_dict(summary: IngestSummary) -> dict:
    return asdict(summary)
