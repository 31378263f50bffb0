"""Great Expectations suites for the event table and the training set.

Each run writes two artifacts whether the data passes or not: a compact JSON report that
pipelines and tests read, and a Data Docs HTML site for people. Failing expectations do not
raise here; the caller decides via `raise_on_failure`, so the evidence is always on disk first.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import great_expectations as gx
import great_expectations.expectations as gxe
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from great_expectations.data_context import FileDataContext
from great_expectations.data_context.types.base import ProgressBarsConfig

from shopguide.adapters import BEHAVIOURS
from shopguide.config import Params
from shopguide.drift import accept_profile, drift_frame, event_profile
from shopguide.duck import connect, sql_path
from shopguide.errors import ShopguideError
from shopguide.exposures import window_events_sql
from shopguide.io import write_json

log = logging.getLogger(__name__)
# GX logs an INFO line per expectation field lookup; keep that out unless someone asked for it.
_gx_log = logging.getLogger("great_expectations")
if _gx_log.level == logging.NOTSET:
    _gx_log.setLevel(logging.WARNING)

EVENT_COLUMNS: tuple[str, ...] = ("user_id", "item_id", "category_id", "behavior", "ts")
# Ids are never negative (serving refuses a negative user or item id with a 400).
ID_COLUMNS: tuple[str, ...] = ("user_id", "item_id", "category_id")
TRAINING_KEYS: tuple[str, ...] = ("user_id", "item_id", "category_id", "t0", "split")
SPLITS: tuple[str, ...] = ("train", "test")
# Parquet int64 is read as the nullable Int64Dtype (see `_read_parquet`); int64 covers writers
# that bypass it.
INT_TYPES = ["int64", "Int64Dtype"]
SITE_NAME = "shopguide"
MAX_EXAMPLES = 5
# Enough unexpected rows to find a few distinct offending values without pulling millions.
RESULT_FORMAT = {"result_format": "SUMMARY", "partial_unexpected_count": 50}


@dataclass(frozen=True)
class ValidationReport:
    """Outcome of one suite run; `results` has one entry per expectation."""

    suite: str
    success: bool
    results: list[dict]
    json_path: Path
    docs_path: Path


def _read_parquet(path: Path, wanted: Callable[[str], bool]) -> pd.DataFrame:
    """Load only the columns `wanted` accepts; integers stay integers even with nulls."""
    path = Path(path)
    if not path.is_file():
        raise ShopguideError(f"{path}: Parquet file to validate not found")
    try:
        names = pq.read_schema(path).names
        table = pq.read_table(path, columns=[n for n in names if wanted(n)])
    except (pa.ArrowException, OSError) as exc:
        raise ShopguideError(f"{path}: cannot read as Parquet: {exc}") from exc
    # Without the mapper a null in an int64 column turns the whole column into float64, which
    # would report a type failure on top of the real (null) one.
    return table.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get)


def _events_suite(params: Params) -> gx.ExpectationSuite:
    protocol, limits = params.protocol, params.validation
    expectations: list[gxe.Expectation] = [
        gxe.ExpectTableColumnsToMatchOrderedList(column_list=list(EVENT_COLUMNS)),
        gxe.ExpectTableRowCountToBeBetween(min_value=limits.min_events),
        # The same event twice would double-count behaviour features and labels.
        gxe.ExpectCompoundColumnsToBeUnique(
            column_list=list(EVENT_COLUMNS), mostly=1 - limits.max_duplicate_fraction
        ),
        *(gxe.ExpectColumnValuesToBeBetween(column=c, min_value=0) for c in ID_COLUMNS),
    ]
    for column in EVENT_COLUMNS:
        type_list = ["str"] if column == "behavior" else INT_TYPES
        expectations += [
            gxe.ExpectColumnValuesToBeInTypeList(column=column, type_list=type_list),
            gxe.ExpectColumnValuesToNotBeNull(column=column),
        ]
    expectations += [
        gxe.ExpectColumnValuesToBeInSet(
            column="behavior", value_set=list(BEHAVIOURS[params.data.adapter])
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="ts",
            min_value=protocol.window_start,
            max_value=protocol.window_end - 1,
            mostly=1 - limits.max_out_of_window_fraction,
        ),
    ]
    return gx.ExpectationSuite(name="events", expectations=expectations)


def _events_check(events: Path, params: Params) -> Check:
    """The events suite on the whole table, or, past `validation.in_memory_rows`, on a sample
    that keeps the first 50 offending rows of every row-level expectation (file order, so every
    run reports the same rows), with each verdict and count computed by DuckDB over every row
    (no pandas copy of a large table)."""
    path = Path(events)
    schema, rows = _parquet_shape(path)
    suite, limits = _events_suite(params), params.validation
    if rows <= limits.in_memory_rows:
        return Check(suite, _read_parquet(path, lambda _: True), [])
    con = connect(params.data)
    source = f"read_parquet({sql_path(path)})"
    exact: dict[tuple[str, str | None], dict] = {
        ("expect_table_row_count_to_be_between", None): {
            "success": rows >= limits.min_events,
            "observed": rows,
        }
    }
    offenders: list[str] = []
    if set(EVENT_COLUMNS) <= set(schema.names):
        cols = ", ".join(EVENT_COLUMNS)
        duplicated = f"SELECT {cols}, count(*) AS n FROM {source} GROUP BY {cols} HAVING n > 1"
        ((duplicate_rows,),) = con.execute(
            f"SELECT coalesce(sum(n), 0) FROM ({duplicated})"
        ).fetchall()
        predicates = _row_predicates(params, schema)
        counts = _row_counts(con, source, predicates)
        for (expectation, column), (predicate, mostly) in predicates.items():
            unexpected, considered = counts[expectation, column]
            exact[expectation, column] = _verdict(unexpected, considered, rows, mostly)
            offenders.append(
                f"(SELECT file_row_number FROM src WHERE {predicate} "
                "ORDER BY file_row_number LIMIT 50)"
            )
        exact["expect_compound_columns_to_be_unique", None] = _verdict(
            int(duplicate_rows), rows, rows, 1 - limits.max_duplicate_fraction
        )
        first_duplicates = (
            f"SELECT {cols} FROM src GROUP BY {cols} HAVING count(*) > 1 "
            "ORDER BY min(file_row_number) LIMIT 25"
        )
        match = " AND ".join(f"s.{c} IS NOT DISTINCT FROM d.{c}" for c in EVENT_COLUMNS)
        offenders.append(
            f"(SELECT s.file_row_number FROM src s SEMI JOIN ({first_duplicates}) d ON {match} "
            "ORDER BY s.file_row_number LIMIT 50)"
        )
    table = _sample(con, path, schema.names, offenders, limits.sample_rows)
    frame = table.cast(schema).to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get)
    log.info("events: %d rows, GX checks a sample of %d; counts over every row", rows, len(frame))
    return Check(suite, frame, [], exact, rows)


def _sample(con, path: Path, columns: list[str], offenders: list[str], rows: int) -> pa.Table:
    """`columns` of a repeatable reservoir sample of `rows` rows of the Parquet file `path`
    and of the rows the `offenders` queries (over `src`, with `file_row_number`) pick, in file
    order."""
    picked = " UNION ALL ".join(
        [
            f"(SELECT file_row_number FROM src USING SAMPLE reservoir({rows} ROWS) REPEATABLE (7))",
            *offenders,
        ]
    )
    selected = ", ".join(f'"{c}"' for c in columns)
    return con.sql(
        f"""WITH src AS (SELECT * FROM read_parquet({sql_path(path)}, file_row_number = true))
            SELECT {selected} FROM src
            WHERE file_row_number IN (SELECT file_row_number FROM ({picked}))
            ORDER BY file_row_number"""
    ).to_arrow_table()


def _row_predicates(
    params: Params, schema: pa.Schema
) -> dict[tuple[str, str], tuple[str, float | None]]:
    """SQL condition of the rows each row-level expectation of the events suite rejects (nulls
    are not judged by the value checks, as in GX), and its `mostly`."""
    protocol, limits = params.protocol, params.validation
    behaviours = ", ".join(f"'{b}'" for b in BEHAVIOURS[params.data.adapter])
    predicates = {
        ("expect_column_values_to_not_be_null", c): (f"{c} IS NULL", None) for c in EVENT_COLUMNS
    }
    predicates["expect_column_values_to_be_in_set", "behavior"] = (
        f"behavior NOT IN ({behaviours})",
        None,
    )
    for c in ID_COLUMNS:
        predicates["expect_column_values_to_be_between", c] = (f"{c} < 0", None)
    predicates["expect_column_values_to_be_between", "ts"] = (
        f"(ts < {protocol.window_start} OR ts > {protocol.window_end - 1})",
        1 - limits.max_out_of_window_fraction,
    )
    if pa.types.is_string(schema.field("behavior").type):  # GX checks str values one by one
        predicates["expect_column_values_to_be_in_type_list", "behavior"] = ("false", None)
    return predicates


def _row_counts(con, source: str, predicates: dict) -> dict[tuple[str, str], tuple[int, int]]:
    """(rows rejected, rows judged) of every predicate, in one pass over `source`."""
    keys = list(predicates)
    selects = []
    for expectation, column in keys:
        predicate, _ = predicates[expectation, column]
        judged = "true" if "not_be_null" in expectation else f'"{column}" IS NOT NULL'
        selects += [f"count(*) FILTER (WHERE {predicate})", f"count(*) FILTER (WHERE {judged})"]
    (values,) = con.execute(f"SELECT {', '.join(selects)} FROM {source}").fetchall()
    return {key: (int(values[2 * i]), int(values[2 * i + 1])) for i, key in enumerate(keys)}


def _verdict(unexpected: int, judged: int, rows: int, mostly: float | None) -> dict:
    """A GX-shaped result: success under `mostly` and the unexpected counts."""
    share = unexpected / judged if judged else 0.0
    success = share == 0 if mostly is None else 1 - share >= mostly
    return {
        "success": success,
        "observed": {
            "unexpected_count": unexpected,
            "element_count": rows,
            "unexpected_percent": 100 * share,
        },
    }


def _funnel_suite(params: Params) -> gx.ExpectationSuite:
    """Purchases must follow a view of the same item by the same user (see `_funnel_frame`)."""
    return gx.ExpectationSuite(
        name="funnel",
        expectations=[
            gxe.ExpectColumnValuesToBeInSet(
                column="exposed",
                value_set=[True],
                mostly=1 - params.validation.max_unexposed_buy_fraction,
            )
        ],
    )


def _funnel_frame(events: Path, params: Params) -> pd.DataFrame:
    """One row per in-window `buy`: exposed when the pair has a `pv` at or before it."""
    con = connect(params.data)
    relation = window_events_sql(events, params.protocol)
    # A grouped first view joined back (both spill to disk), not a window over every event.
    return con.execute(
        f"""WITH first_pv AS (
                SELECT user_id, item_id, min(ts) AS first_pv FROM {relation}
                WHERE behavior = 'pv' GROUP BY ALL)
            SELECT b.user_id, b.item_id, b.ts, coalesce(f.first_pv <= b.ts, false) AS exposed,
                   b.behavior
            FROM {relation} b LEFT JOIN first_pv f USING (user_id, item_id)
            WHERE b.behavior = 'buy'
            ORDER BY b.user_id, b.item_id, b.ts"""
    ).df()


def _drift_suite(frame: pd.DataFrame, params: Params) -> gx.ExpectationSuite:
    limit = params.validation.max_drift_psi
    return gx.ExpectationSuite(
        name="drift",
        expectations=[
            gxe.ExpectColumnValuesToBeBetween(column=c, min_value=0, max_value=limit)
            for c in frame.columns
        ],
    )


def _training_suite(params: Params, features: list[str]) -> gx.ExpectationSuite:
    tasks, limits = params.protocol.tasks, params.validation
    required = [*TRAINING_KEYS, "event_timestamp", *tasks]
    expectations: list[gxe.Expectation] = [
        *(gxe.ExpectColumnToExist(column=c) for c in required),
        gxe.ExpectTableRowCountToBeBetween(min_value=limits.min_exposures),
        *(gxe.ExpectColumnValuesToNotBeNull(column=c) for c in TRAINING_KEYS),
        gxe.ExpectColumnValuesToBeInSet(column="split", value_set=list(SPLITS)),
    ]
    for task in tasks:
        bounds = limits.positive_rate[task]
        expectations += [
            # A null label would silently drop out of both the loss and the positive rate.
            gxe.ExpectColumnValuesToNotBeNull(column=task),
            gxe.ExpectColumnValuesToBeInSet(column=task, value_set=[0, 1]),
            gxe.ExpectColumnMeanToBeBetween(
                column=task, min_value=bounds.min, max_value=bounds.max
            ),
        ]
    for feature in features:
        expectations += [
            gxe.ExpectColumnValuesToNotBeNull(column=feature),
            gxe.ExpectColumnValuesToBeBetween(column=feature, min_value=0),
        ]
    return gx.ExpectationSuite(name="training_set", expectations=expectations)


def _context(report_dir: Path) -> FileDataContext:
    """File context under `report_dir/gx` whose Data Docs site lives in `report_dir/data_docs`.

    Idempotent, so a context left by an earlier run is reused rather than rejected.
    """
    context = gx.get_context(mode="file", project_root_dir=report_dir)
    sites = list(context.list_data_docs_sites())
    if SITE_NAME not in sites:
        for name in sites:
            context.delete_data_docs_site(name)
        context.add_data_docs_site(
            SITE_NAME,
            {
                "class_name": "SiteBuilder",
                "show_how_to_buttons": False,
                # Relative to the context root, so the report directory can be moved.
                "store_backend": {
                    "class_name": "TupleFilesystemStoreBackend",
                    "base_directory": "../data_docs/",
                },
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            },
        )
        # tqdm bars from metric calculation would flood pipeline logs.
        context.variables.progress_bars = ProgressBarsConfig(
            globally=False, metric_calculations=False
        )
        context.variables.save()
    return context


def _summarise(result: dict) -> dict:
    """Reduce one GX expectation result (JSON form) to what a person needs to act on it."""
    config, details = result["expectation_config"], result.get("result") or {}
    kwargs = {k: v for k, v in config["kwargs"].items() if k != "batch_id"}
    if "observed_value" in details:
        observed: Any = details["observed_value"]
    elif "unexpected_count" in details:
        observed = {
            "unexpected_count": details["unexpected_count"],
            "element_count": details.get("element_count"),
            "unexpected_percent": details.get("unexpected_percent"),
        }
    else:
        observed = _exception_message(result.get("exception_info") or {})
    # Whole offending rows when the check names row-id columns, else the offending values.
    partial = (
        [r for r in details.get("partial_unexpected_index_list") or [] if isinstance(r, dict)]
        or details.get("partial_unexpected_list")
        or []
    )
    examples = list({json.dumps(r, sort_keys=True, default=str): r for r in partial}.values())
    examples = examples[:MAX_EXAMPLES]
    return {
        "expectation": config["type"],
        "column": kwargs.get("column"),
        "kwargs": kwargs,
        "success": bool(result["success"]),
        "observed": observed,
        "unexpected_examples": examples,
    }


def _exception_message(info: dict) -> str | None:
    """GX nests exception info per metric when a metric failed, flat when the expectation did."""
    if "exception_message" in info:
        return info["exception_message"]
    messages = [v["exception_message"] for v in info.values() if isinstance(v, dict)]
    return "; ".join(dict.fromkeys(messages)) or None


def _plain(value: Any) -> Any:
    """GX's JSON form still holds numpy scalars (e.g. np.float64 means); make them builtins."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value.item() if isinstance(value, np.generic) else value


@dataclass(frozen=True)
class Check:
    """One suite run on `frame`; offending rows are listed by the `row_ids` columns.

    `exact` (for a sample of a large table) maps (expectation, column) to the verdict and
    counts over every row, which replace GX's figures on the sample.
    """

    suite: gx.ExpectationSuite
    frame: pd.DataFrame
    row_ids: list[str]
    exact: dict[tuple[str, str | None], dict] | None = None
    rows: int | None = None  # rows of the whole table when `frame` is a sample


def _check(context: FileDataContext, check: Check) -> tuple[bool, list[dict]]:
    """Run one suite; failures list up to 50 offending rows by the row-id columns."""
    suite, frame, rows = check.suite, check.frame, check.row_ids
    # One datasource per suite: replacing it on a rerun leaves the other suite's stored
    # checkpoint pointing at a live asset.
    datasource = context.data_sources.add_or_update_pandas(suite.name)
    asset = datasource.add_dataframe_asset(suite.name)
    batch = asset.add_batch_definition_whole_dataframe(suite.name)
    definition = gx.ValidationDefinition(
        name=suite.name, data=batch, suite=context.suites.add_or_update(suite)
    )
    checkpoint = context.checkpoints.add_or_update(
        gx.Checkpoint(
            name=suite.name,
            validation_definitions=[definition],
            actions=[gx.checkpoint.UpdateDataDocsAction(name="docs", site_names=[SITE_NAME])],
            result_format={**RESULT_FORMAT, "unexpected_index_column_names": rows},
        )
    )
    # Copy-on-write: GX takes a full copy of the frame for every row-level expectation (a
    # no-op row filter), which without it copies a wide training set hundreds of times.
    with pd.option_context("mode.copy_on_write", True):
        outcome = checkpoint.run(batch_parameters={"dataframe": frame})
    (suite_result,) = outcome.run_results.values()
    results = [
        {**_summarise(_plain(r.to_json_dict())), "suite": suite.name} for r in suite_result.results
    ]
    if check.exact is None:
        return bool(outcome.success), results
    for result in results:
        exact = check.exact.get((result["expectation"], result["column"]))
        if exact is not None and type(exact["observed"]) is type(result["observed"]):
            result.update(exact)
    return all(r["success"] for r in results), results


def run_checks(checks: list[Check], source: Path, report_dir: Path) -> ValidationReport:
    """Run every check; one report named after the first suite."""
    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    context = _context(report_dir)
    success, results = True, []
    for check in checks:
        ok, found = _check(context, check)
        success, results = success and ok, results + found
    first = checks[0]
    name, rows = first.suite.name, first.rows or len(first.frame)
    docs_path = report_dir / "data_docs" / "index.html"
    json_path = report_dir / f"{name}.json"
    report = ValidationReport(name, success, results, json_path, docs_path)
    write_json(
        json_path,
        {
            "suite": name,
            "source": str(source),
            "success": report.success,
            "rows": rows,
            "validated_rows": len(first.frame),
            "failed": sum(not r["success"] for r in results),
            "results": results,
            "docs_path": str(docs_path),
        },
    )
    log.info(
        "%s suite on %s: %s (%d/%d expectations met); report %s, docs %s",
        name,
        source,
        "passed" if report.success else "FAILED",
        sum(r["success"] for r in results),
        len(results),
        json_path,
        docs_path,
    )
    return report


def validate_events(
    events: Path, params: Params, report_dir: Path, profile_dir: Path | None = None
) -> ValidationReport:
    """Check the ingested event table against the protocol before anything is built on it.

    Every column is loaded: the suite checks the exact column list, so extras must be seen.
    Besides the column checks: purchases without a view (funnel) and, once a run has been
    accepted, drift of its profile; a passing run becomes the accepted profile, kept in
    `profile_dir` (default `report_dir`; on a cluster a directory that outlives the run).
    """
    profile_dir = Path(profile_dir or report_dir)
    events_check = _events_check(events, params)
    frame = events_check.frame
    row_ids = [c for c in ("user_id", "item_id", "ts") if c in frame.columns]
    checks = [replace(events_check, row_ids=row_ids)]
    complete = set(EVENT_COLUMNS) <= set(frame.columns)
    if complete:
        checks.append(Check(_funnel_suite(params), _funnel_frame(events, params), row_ids))
        profile = event_profile(events, params)
        drift = drift_frame(profile, profile_dir, params)
        if drift is not None:
            checks.append(Check(_drift_suite(drift, params), drift, []))
    report = run_checks(checks, events, report_dir)
    if report.success and complete:
        accept_profile(profile, profile_dir)
    return report


def validate_training_set(training_set: Path, params: Params, report_dir: Path) -> ValidationReport:
    """Check labels, keys and features of the training set before a model is fit on it."""
    check = _training_check(Path(training_set), params)
    frame = check.frame
    # GX compares only numpy int64 and float64 columns vectorised, any other dtype (float32,
    # the nullable Int64) one value at a time in Python: minutes on a few hundred thousand
    # rows. So float32 features are read as float64 (exact), and integer features without a
    # null as numpy int64 (a null keeps the nullable type, for the null check to name it).
    features = [c for c in frame.columns if "__" in c]
    vectorised = {c: "float64" for c in features if frame[c].dtype == "float32"} | {
        c: "int64"
        for c in features
        if isinstance(frame[c].dtype, pd.Int64Dtype) and not frame[c].hasnans
    }
    return run_checks([replace(check, frame=frame.astype(vectorised))], training_set, report_dir)


def _training_check(path: Path, params: Params) -> Check:
    """The training-set suite on the keys, labels and features (`a__b` columns) of the whole
    table, or, past `validation.training_sample_rows`, on a sample of that many rows and the
    first 50 offending rows of every failing row-level expectation, each verdict, count and
    label mean computed by DuckDB over every row: a training set of any size is checked
    without loading it."""
    schema, rows = _parquet_shape(path)
    required = {*TRAINING_KEYS, "event_timestamp", *params.protocol.tasks}
    names = [n for n in schema.names if n in required or "__" in n]
    features = [c for c in names if "__" in c]
    suite, limits = _training_suite(params, features), params.validation
    if rows <= limits.training_sample_rows:
        return Check(suite, _read_parquet(path, lambda name: name in names), [])
    con = connect(params.data)
    source = f"read_parquet({sql_path(path)})"
    tasks = [t for t in params.protocol.tasks if t in names]
    predicates = {
        ("expect_column_values_to_not_be_null", c): (f'"{c}" IS NULL', None)
        for c in (*TRAINING_KEYS, *tasks, *features)
        if c in names
    }
    if "split" in names:
        splits = ", ".join(f"'{s}'" for s in SPLITS)
        predicates["expect_column_values_to_be_in_set", "split"] = (
            f"split NOT IN ({splits})",
            None,
        )
    for task in tasks:
        predicates["expect_column_values_to_be_in_set", task] = (f'"{task}" NOT IN (0, 1)', None)
    for feature in features:
        predicates["expect_column_values_to_be_between", feature] = (f'"{feature}" < 0', None)
    exact: dict[tuple[str, str | None], dict] = {
        ("expect_table_row_count_to_be_between", None): {
            "success": rows >= limits.min_exposures,
            "observed": rows,
        }
    }
    offenders = []
    for key, (unexpected, judged) in _screened_counts(con, source, predicates, rows).items():
        predicate, mostly = predicates[key]
        exact[key] = _verdict(unexpected, judged, rows, mostly)
        if unexpected:
            offenders.append(
                f"(SELECT file_row_number FROM src WHERE {predicate} "
                "ORDER BY file_row_number LIMIT 50)"
            )
    if tasks:
        averages = ", ".join(f'avg("{t}")' for t in tasks)
        (means,) = con.execute(f"SELECT {averages} FROM {source}").fetchall()
        for task, mean in zip(tasks, means, strict=True):
            bounds = limits.positive_rate[task]
            exact["expect_column_mean_to_be_between", task] = {
                "success": mean is not None and bounds.min <= mean <= bounds.max,
                "observed": mean,
            }
    table = _sample(con, path, names, offenders, limits.training_sample_rows)
    frame = table.cast(pa.schema([schema.field(n) for n in names])).to_pandas(
        types_mapper={pa.int64(): pd.Int64Dtype()}.get
    )
    log.info(
        "training set: %d rows, GX checks a sample of %d; counts over every row", rows, len(frame)
    )
    return Check(suite, frame, [], exact, rows)


def _screened_counts(
    con, source: str, predicates: dict, rows: int
) -> dict[tuple[str, str], tuple[int, int]]:
    """`_row_counts` of the training set's predicates, most from one pass of each column's
    count and minimum (nulls are the rows less the count; no row is below zero where the
    minimum is not), filtered counts only for the set checks and the columns that fail."""
    columns = list(dict.fromkeys(column for _, column in predicates))
    stats = ", ".join(f'count("{c}"), min("{c}")' for c in columns)
    (values,) = con.execute(f"SELECT {stats} FROM {source}").fetchall()
    present = dict(zip(columns, values[::2], strict=True))
    lowest = dict(zip(columns, values[1::2], strict=True))
    counts = {}
    for expectation, column in predicates:
        if expectation == "expect_column_values_to_not_be_null":
            counts[expectation, column] = (rows - present[column], rows)
        elif expectation == "expect_column_values_to_be_between" and (
            lowest[column] is None or lowest[column] >= 0
        ):
            counts[expectation, column] = (0, present[column])
    rest = {key: value for key, value in predicates.items() if key not in counts}
    return counts | (_row_counts(con, source, rest) if rest else {})


def _parquet_shape(path: Path) -> tuple[pa.Schema, int]:
    """The schema (without metadata) and row count of a Parquet file; errors name the file."""
    if not path.is_file():
        raise ShopguideError(f"{path}: Parquet file to validate not found")
    try:
        return pq.read_schema(path).remove_metadata(), pq.read_metadata(path).num_rows
    except (pa.ArrowException, OSError) as exc:
        raise ShopguideError(f"{path}: cannot read as Parquet: {exc}") from exc


def _describe(result: dict) -> str:
    where = result["column"] or result["kwargs"].get("column_list")
    column = f" on column '{where}'" if where else ""
    observed = result["observed"]
    if isinstance(observed, dict):
        observed = (
            f"{observed['unexpected_count']} of {observed['element_count']} values unexpected "
            f"({observed['unexpected_percent']:.3g}%)"
        )
    else:
        observed = repr(observed)
    text = f"  - {result['expectation']}{column}: observed {observed}"
    if result["unexpected_examples"]:
        text += f"; unexpected values e.g. (sample rows) {result['unexpected_examples']!r}"
    return text


def raise_on_failure(report: ValidationReport, source: Path) -> None:
    """Stop the step with every failed expectation spelled out and where to see the details."""
    if report.success:
        return
    failed = [_describe(r) for r in report.results if not r["success"]]
    raise ShopguideError(
        f"{source}: {report.suite} validation failed, "
        f"{len(failed)} of {len(report.results)} expectations not met:\n"
        + "\n".join(failed)
        + f"\n  report: {report.json_path}\n  data docs: {report.docs_path}"
    )
