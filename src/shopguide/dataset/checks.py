"""Great Expectations suites derived from a dataset schema: one per declared table (its key
unique, non-nullable columns filled, numeric ranges, allowed categorical values) and one for
the example table (keys, split, every label in its task type's domain). Offending rows are
named by their line in the source file."""

from __future__ import annotations

from pathlib import Path

import great_expectations as gx
import great_expectations.expectations as gxe
import pandas as pd

from shopguide.dataset.drift import accept, drift_against_accepted
from shopguide.dataset.examples import Tables, build_examples
from shopguide.dataset.schema import DatasetSchema
from shopguide.dataset.tables import LINE, SPLIT, read_table, table_path
from shopguide.validation import SPLITS, Check, ValidationReport, run_checks


def table_suite(schema: DatasetSchema, name: str) -> gx.ExpectationSuite:
    spec = schema.tables[name]
    expectations: list[gxe.Expectation] = [gxe.ExpectColumnToExist(column=c) for c in spec.columns]
    if not spec.key:
        pass  # a log: nothing is unique per row
    elif len(spec.key) == 1:
        expectations.append(gxe.ExpectColumnValuesToBeUnique(column=spec.key[0]))
    else:
        expectations.append(gxe.ExpectCompoundColumnsToBeUnique(column_list=list(spec.key)))
    for column, c in spec.columns.items():
        if not c.nullable or column in spec.key:
            expectations.append(gxe.ExpectColumnValuesToNotBeNull(column=column))
        if c.type == "numeric" and (c.min is not None or c.max is not None):
            expectations.append(
                gxe.ExpectColumnValuesToBeBetween(column=column, min_value=c.min, max_value=c.max)
            )
        if c.values is not None:
            expectations.append(gxe.ExpectColumnValuesToBeInSet(column=column, value_set=c.values))
    return gx.ExpectationSuite(name=f"{schema.name}_{name}", expectations=expectations)


def examples_suite(schema: DatasetSchema) -> gx.ExpectationSuite:
    keys = ["user_id", "item_id", "category_id", "t0", "split"]
    expectations: list[gxe.Expectation] = [
        gxe.ExpectTableRowCountToBeBetween(min_value=1),
        *(gxe.ExpectColumnValuesToNotBeNull(column=c) for c in keys),
        gxe.ExpectColumnValuesToBeInSet(column="split", value_set=list(SPLITS)),
    ]
    for task, spec in schema.tasks.items():
        if spec.type == "binary":
            domain = gxe.ExpectColumnValuesToBeInSet(column=task, value_set=[0, 1])
        elif spec.type == "multiclass":
            domain = gxe.ExpectColumnValuesToBeBetween(
                column=task, min_value=0, max_value=spec.n_classes - 1
            )
        else:  # a regression label must be a finite number where it is known
            domain = gxe.ExpectColumnValuesToBeBetween(
                column=task, min_value=-1e300, max_value=1e300
            )
        expectations.append(domain)
    return gx.ExpectationSuite(name=f"{schema.name}_examples", expectations=expectations)


def used_tables(schema: DatasetSchema) -> list[str]:
    return [schema.unit, *schema.joined()]


def drift_suite(schema: DatasetSchema, drift: pd.DataFrame, max_psi: float) -> gx.ExpectationSuite:
    return gx.ExpectationSuite(
        name=f"{schema.name}_drift",
        expectations=[
            gxe.ExpectColumnValuesToBeBetween(column=c, min_value=0, max_value=max_psi)
            for c in drift.columns
        ],
    )


def validate_dataset(
    schema: DatasetSchema,
    source: Path,
    report_dir: Path,
    root: Path | None = None,
    max_drift_psi: float = 0.2,
    tables: Tables | None = None,
) -> tuple[ValidationReport, pd.DataFrame | None]:
    """The used tables' suites (one report), then, when they pass, the example table's and
    the drift of every declared column against the last accepted run (`max_drift_psi`; a
    second report, and a passing run becomes the accepted one); the last report and the
    examples (None unless every suite passed, so nothing is built on bad rows)."""
    checks = []
    tables = {} if tables is None else tables
    for name in used_tables(schema):
        frame = tables[name] = read_table(schema, name, root)
        rows = [LINE, SPLIT] if SPLIT in frame.columns else [LINE]
        checks.append(Check(table_suite(schema, name), frame, rows))
    report = run_checks(checks, table_path(schema, schema.unit, root), report_dir)
    if not report.success:
        return report, None
    examples = build_examples(schema, root, tables)
    current, drift = drift_against_accepted(examples, schema, report_dir)
    checks = [Check(examples_suite(schema), examples, [])]
    if drift is not None:
        checks.append(Check(drift_suite(schema, drift, max_drift_psi), drift, []))
    report = run_checks(checks, Path(source), report_dir)
    if not report.success:
        return report, None
    accept(current, schema, report_dir)
    return report, examples
