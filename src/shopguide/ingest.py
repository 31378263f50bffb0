"""Raw Taobao UserBehavior CSV -> canonical Parquet event table.

DuckDB streams the CSV, so the full public file (about 100 million rows) is read in bounded
memory. Lines that do not parse into five fields with integer ids and timestamp are dropped as
the protocol says, but only up to `data.max_malformed_fraction`: past that the input is judged
broken and the step fails, naming the file and the first offending rows (each example cut to
MAX_EXAMPLE_CHARS). With `data.drop_duplicate_events` exact duplicate events are dropped and
counted. Helpers here serve every CSV adapter: the checks of the raw file (a directory, an empty
file, UTF-16 or UTF-32 text are clear errors) and a file that mixes CRLF and LF line endings,
read from an LF copy with a warning.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
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
MAX_EXAMPLE_CHARS = 200  # of a malformed line, and of DuckDB's message about it
# Byte-order marks of the encodings DuckDB does not read as text (UTF-32 before UTF-16: its
# little-endian mark starts with UTF-16's).
BYTE_ORDER_MARKS = {
    b"\xff\xfe\x00\x00": "UTF-32 (little-endian)",
    b"\x00\x00\xfe\xff": "UTF-32 (big-endian)",
    b"\xff\xfe": "UTF-16 (little-endian)",
    b"\xfe\xff": "UTF-16 (big-endian)",
}


@dataclass(frozen=True)
class IngestSummary:
    source: str
    rows: int
    malformed_rows: int
    malformed_examples: list[str]
    min_ts: int
    max_ts: int
    duplicate_events_dropped: int = 0


def _cut(text: str, length: int) -> str:
    return text if length <= MAX_EXAMPLE_CHARS else f"{text}... ({length} characters)"


def _describe_rejects(con) -> tuple[int, list[str]]:
    # one line can fail on several fields: count lines, not errors
    (count,) = con.execute("SELECT count(DISTINCT (file_id, line)) FROM reject_errors").fetchone()
    n = MAX_EXAMPLE_CHARS
    rows = con.execute(
        f"""SELECT line, column_name, error_type, left(csv_line, {n}), length(csv_line),
                   left(split_part(error_message, chr(10), 1), {n}),
                   length(split_part(error_message, chr(10), 1))
            FROM reject_errors ORDER BY line LIMIT {MAX_EXAMPLES}"""
    ).fetchall()
    examples = [
        f"line {line}: {etype.lower()} in column '{col}' ({_cut(msg, msg_len)}): "
        f"{_cut(repr(raw), raw_len)}"
        for line, col, etype, raw, raw_len, msg, msg_len in rows
    ]
    return count, examples


def _utf16_or_32(head: bytes) -> str | None:
    """The encoding of text DuckDB cannot read, from the first bytes of a file: a byte-order
    mark, or (no mark) a NUL in every other byte of what would be ASCII in UTF-16."""
    for mark, encoding in BYTE_ORDER_MARKS.items():
        if head.startswith(mark):
            return encoding
    pairs = len(head) // 2
    if pairs >= 8:
        if head[1 : 2 * pairs : 2].count(0) == pairs and head[0 : 2 * pairs : 2].count(0) == 0:
            return "UTF-16 (little-endian, no byte-order mark)"
        if head[0 : 2 * pairs : 2].count(0) == pairs and head[1 : 2 * pairs : 2].count(0) == 0:
            return "UTF-16 (big-endian, no byte-order mark)"
    return None


def require_file(source: Path, what: str) -> Path:
    """The raw file, or a clear error when it is missing, a directory, empty, or text in an
    encoding DuckDB does not read (UTF-16, UTF-32)."""
    source = Path(source)
    if source.is_dir():
        raise ShopguideError(
            f"{source}: is a directory, expected the raw events file (data.raw_path)"
        )
    if not source.is_file():
        raise ShopguideError(f"{source}: raw events file not found (set data.raw_path)")
    if source.stat().st_size == 0:
        raise ShopguideError(f"{source}: file is empty, expected {what}")
    with source.open("rb") as f:
        encoding = _utf16_or_32(f.read(64))
    if encoding:
        raise ShopguideError(
            f"{source}: the file is {encoding} text; expected UTF-8 (or ASCII) {what}. Convert "
            f"it first, e.g. `iconv -f {encoding.split()[0]} -t UTF-8 {source} > new.csv`"
        )
    return source


def _mixed_line_endings(source: Path) -> bool:
    """Whether the file has both CRLF and bare LF line endings."""
    crlf = lf = False
    carry = b""
    with source.open("rb") as f:
        while block := f.read(1 << 20):
            block, carry = carry + block, b""
            if block.endswith(b"\r"):  # its LF may start the next block
                block, carry = block[:-1], b"\r"
            pairs = block.count(b"\r\n")
            crlf, lf = crlf or pairs > 0, lf or block.count(b"\n") > pairs
            if crlf and lf:
                return True
    return False


def _lf_copy(source: Path, dest: Path) -> None:
    carry = b""
    with source.open("rb") as f, dest.open("wb") as out:
        while block := f.read(1 << 20):
            block, carry = carry + block, b""
            if block.endswith(b"\r"):
                block, carry = block[:-1], b"\r"
            out.write(block.replace(b"\r\n", b"\n"))
        out.write(carry)


def copy_csv(source: Path, out: Path, copy: Callable[[Path, Path], None], expected: str) -> Path:
    """Run `copy(csv, out)`, DuckDB statements that read the CSV at `csv` into the file `out`,
    on `source`; return the file written. DuckDB's parser refuses a file that mixes CRLF and
    LF line endings (a CRLF file with lines added on Unix, say); such a file is read from an LF
    copy beside `out`, with a warning, into another file: DuckDB may remove the output of the
    failed attempt after it has raised (seen in the test suite). Any other file DuckDB cannot
    parse is an error that names it."""
    try:
        copy(source, out)
        return out
    except (duckdb.InvalidInputException, duckdb.ConversionException) as exc:
        if not _mixed_line_endings(source):
            raise ShopguideError(
                f"{source}: not a plain-text CSV of {expected} (compressed or binary?): "
                f"{str(exc).splitlines()[0]}"
            ) from exc
    log.warning("%s: mixes CRLF and LF line endings; reading a copy with LF endings", source)
    lf, retried = out.with_name(f"{source.name}.lf"), out.with_name(f"lf-{out.name}")
    try:
        _lf_copy(source, lf)
        copy(lf, retried)
    except (duckdb.InvalidInputException, duckdb.ConversionException) as exc:
        raise ShopguideError(
            f"{source}: not a plain-text CSV of {expected} (even with its line endings made "
            f"LF): {str(exc).splitlines()[0]}"
        ) from exc
    finally:
        lf.unlink(missing_ok=True)
    return retried


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


def drop_duplicates(con, staged: Path, out: Path, rows: int) -> int:
    """Write the distinct rows of the Parquet file `staged` to `out`; return how many rows that
    dropped."""
    (kept,) = con.execute(
        f"""COPY (SELECT DISTINCT * FROM read_parquet({sql_path(staged)}))
            TO {sql_path(out)} (FORMAT parquet, COMPRESSION zstd)"""
    ).fetchone()
    if rows > kept:
        log.warning("dropped %d exact duplicate events (data.drop_duplicate_events)", rows - kept)
    return rows - kept


def ingest_taobao(source: Path, out: Path, params: DataParams) -> IngestSummary:
    """Parse `source` into `out` (Parquet) atomically and return what was read."""
    source = require_file(source, "Taobao UserBehavior rows")
    con = connect(params)
    columns = "{" + ", ".join(f"'{k}': '{v}'" for k, v in EVENT_COLUMNS.items()) + "}"
    expected = "5 columns user_id,item_id,category_id,behavior_type,timestamp"
    with atomic_path(out) as tmp:

        def copy(csv: Path, parsed: Path) -> None:
            con.execute(
                f"""COPY (
                        SELECT * FROM read_csv({sql_path(csv)}, header = false, delim = ',',
                            auto_detect = false, columns = {columns}, store_rejects = true,
                            null_padding = false)
                    ) TO {sql_path(parsed)} (FORMAT parquet, COMPRESSION zstd)"""
            )

        # Never straight into `tmp`: a failed COPY may remove its output file late.
        parsed = copy_csv(source, tmp.with_name("parsed.parquet"), copy, expected)
        rows, min_ts, max_ts = con.execute(
            f"SELECT count(*), min(ts), max(ts) FROM read_parquet({sql_path(parsed)})"
        ).fetchone()
        bad, examples = check_rejects(con, source, rows, expected, params)
        if params.drop_duplicate_events:
            dropped = drop_duplicates(con, parsed, tmp, rows)
        else:
            dropped = 0
            parsed.rename(tmp)
    summary = IngestSummary(str(source), rows - dropped, bad, examples, min_ts, max_ts, dropped)
    log.info("ingested %d events from %s into %s", rows - dropped, source, out)
    return summary


def summary_dict(summary: IngestSummary) -> dict:
    return asdict(summary)
