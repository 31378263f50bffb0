"""The dataset schema, validated on load: every reference resolves to a declared column of a
declared table, and nothing a feature reads can be known only after the example's moment t0.

A column is known at t0 when neither it nor its table declares `known_at` (a static attribute,
or a fact of the order itself), or when its `known_at` is the unit's `time` column. Anything
else (a review's score, a delivery date) may reach the model only through `history`, which
counts an earlier example's value from the moment it became known."""

from __future__ import annotations

import reprlib
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from shopguide.config import format_errors
from shopguide.errors import ShopguideError

ColumnType = Literal["id", "categorical", "numeric", "multi_categorical", "text", "timestamp"]
# How a feature reaches the model, by the type of the column it reads.
FEATURE_KINDS: dict[str, str] = {
    "id": "categorical",
    "categorical": "categorical",
    "numeric": "numeric",
    "timestamp": "numeric",
    "multi_categorical": "bag",
    "text": "text",
}
Name = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
# The schema a model was trained on, or a Feast repo generated from, saved beside it.
SCHEMA_FILE = "dataset.json"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class ColumnSpec(Strict):
    """One column: its type and what the data checks hold it to."""

    type: ColumnType
    # A column of the same table holding when this value became known (a delivery date is
    # known when it happens: `known_at` names itself). None: known with its row.
    known_at: str | None = None
    nullable: bool = True
    min: float | None = None  # numeric
    max: float | None = None
    values: tuple[str, ...] | None = None  # categorical: the allowed values
    separator: str = "|"  # multi_categorical

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, raw: Any) -> Any:
        return {"type": raw} if isinstance(raw, str) else raw


class TableSpec(Strict):
    """A source file, or one file per split (`files`, e.g. a dataset released as train and
    test files): its unique key and columns (the files may hold more; they are not read).
    A file is CSV or Parquet by its name, or a SQLite database when `sqlite_table` names the
    table or view to read from it (a shop's own database, read in place)."""

    path: str | None = None
    files: dict[Literal["train", "test"], str] | None = None
    sqlite_table: str | None = Field(default=None, min_length=1)
    key: tuple[str, ...] = ()  # the columns unique per row; none for a log (impressions)
    columns: dict[str, ColumnSpec]
    # A column of this table holding when each row became known (a review: its answer time).
    known_at: str | None = None
    # False: a CSV without a header line, its columns in the declared order.
    header: bool = True
    # Rows that are malformed (a value that does not parse, or missing where the column is not
    # nullable; a cut-off last line) are dropped with a warning naming their lines while they
    # are at most this share of the file's rows; above it the first is an error.
    max_malformed_fraction: float = Field(default=0.0, ge=0.0, lt=1.0)

    @model_validator(mode="after")
    def _own_columns(self) -> TableSpec:
        for what, names in (
            ("key", self.key),
            ("known_at", [self.known_at] if self.known_at else []),
            ("known_at of a column", [c.known_at for c in self.columns.values() if c.known_at]),
        ):
            missing = [n for n in names if n not in self.columns]
            if missing:
                raise ValueError(f"{what} names undeclared columns {missing}")
        if self.known_at and self.columns[self.known_at].type != "timestamp":
            raise ValueError(f"known_at {self.known_at!r} is not a timestamp column")
        if (self.path is None) == (self.files is None):
            raise ValueError("give exactly one of path and files")
        return self

    def paths(self) -> dict[str, str]:
        """{split or "": file}: the files the table is read from."""
        return dict(self.files) if self.files else {"": self.path or ""}


class JoinSpec(Strict):
    """Attach `table`'s row whose `right` columns equal the example's `left` ones."""

    table: Name
    left: tuple[str, ...]  # qualified columns (table.column) already in the example
    right: tuple[str, ...] = ()  # columns of `table`; default: its key
    # Several rows per join key: `one` is an error, `last`/`first` keep one by `order_by`.
    pick: Literal["one", "last", "first"] = "one"
    order_by: str | None = None
    required: bool = True  # drop examples without a match (else: nulls)

    @model_validator(mode="after")
    def _order(self) -> JoinSpec:
        if (self.pick != "one") != (self.order_by is not None):
            raise ValueError("pick last/first needs order_by, and order_by needs pick")
        return self


class FilterSpec(Strict):
    """Keep the rows whose `column` is not null and, with `in`, one of those values; with
    `at_least` / `below`, a number or timestamp in [at_least, below) (a timestamp bound:
    epoch seconds or date-time text)."""

    column: str
    in_: tuple[str, ...] | None = Field(default=None, alias="in")
    at_least: float | str | None = None
    below: float | str | None = None

    def bounds(self) -> tuple[float, float]:
        """[low, high) in the column's numbers (epoch seconds for a timestamp)."""
        return _number(self.at_least, -np.inf), _number(self.below, np.inf)


def _number(bound: float | str | None, default: float) -> float:
    """A bound as a number: itself, a numeric text, or a date-time text's epoch seconds."""
    if bound is None:
        return default
    try:
        return float(bound)
    except ValueError:
        return pd.Timestamp(bound).timestamp()


class ValueSpec(Strict):
    """A value of an example: a column, `column - minus` (timestamps in `unit`), or a
    comparison (`column op value`, or `column op other`) as 0/1, then an optional log1p and
    the `fill` of missing values."""

    column: str
    minus: str | None = None
    op: Literal["lt", "le", "gt", "ge", "eq", "ne"] | None = None
    value: float | str | None = None
    other: str | None = None
    unit: Literal["seconds", "hours", "days"] = "days"
    # A timestamp's calendar part (UTC): seasonality and time of day.
    part: Literal["month", "weekday", "hour", "day_of_year"] | None = None
    # How a feature reaches the model when not as its column's type says: a number as a
    # category (a month), or a code as a number (a zip prefix, ordered by place).
    kind: Literal["numeric", "categorical"] | None = None
    transform: Literal["none", "log1p"] = "none"
    # The value where an input is missing (an order without a rating row: 0, "not rated");
    # None leaves it missing (a label then unknown, not trained on or judged).
    fill: float | None = None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, raw: Any) -> Any:
        return {"column": raw} if isinstance(raw, str) else raw

    @model_validator(mode="after")
    def _one_form(self) -> ValueSpec:
        if self.op is None and (self.value is not None or self.other is not None):
            raise ValueError("value/other need op")
        if self.op is not None and (self.value is None) == (self.other is None):
            raise ValueError(f"op {self.op} needs exactly one of value and other")
        if self.op is not None and self.minus is not None:
            raise ValueError("a comparison cannot also subtract (minus)")
        if self.part is not None and (self.op is not None or self.minus is not None):
            raise ValueError("part takes a timestamp column alone (no op, no minus)")
        return self

    def columns(self) -> list[str]:
        return [c for c in (self.column, self.minus, self.other) if c]


class TaskSpec(ValueSpec):
    """A label: a value of the example (`column`, ...) or what follows t0 (`next`)."""

    column: str | None = None
    next_: NextSpec | None = Field(default=None, alias="next")
    type: Literal["binary", "regression", "multiclass"]
    n_classes: int = Field(default=2, ge=2)  # multiclass: labels 0..n-1 (values clipped)
    loss: Literal["mse", "huber"] = "mse"  # regression, on the standardised label
    # Served tasks are ranked, gated and returned; auxiliary ones are trained and reported.
    role: Literal["served", "aux"] = "served"
    # Also report the task among the examples where this other binary task is 1 (conversion
    # given click: the CVR beside the CTCVR that the task over every example measures).
    given: Name | None = None

    @model_validator(mode="after")
    def _column_or_next(self) -> TaskSpec:
        if (self.column is None) == (self.next_ is None):
            raise ValueError("give exactly one of column and next")
        if self.next_ is not None and (
            self.op or self.minus or self.part or self.type == "multiclass"
        ):
            raise ValueError("next makes a binary or regression label alone (no op, minus, part)")
        return self


class EventSource(Strict):
    """Rows that share a key with the example (`by`, columns of the example; several: a pair
    such as user x item): those of `table` (an event log, say; `on` its key columns, `where`
    filters, each at its time `at`)."""

    by: tuple[str, ...]
    table: Name | None = None
    on: tuple[str, ...] = ()  # columns of `table` matching `by` (default: the same names)
    where: tuple[FilterSpec, ...] = ()  # qualified columns of `table`
    at: str | None = None  # timestamp column of `table`; default: its known_at

    @model_validator(mode="before")
    @classmethod
    def _single(cls, raw: Any) -> Any:
        if isinstance(raw, dict) and isinstance(raw.get("by"), str):
            return {**raw, "by": [raw["by"]]}
        return raw

    @model_validator(mode="after")
    def _source(self) -> EventSource:
        if self.table is None and (self.on or self.where or self.at):
            raise ValueError("on, where and at are for a `table` source")
        if self.on and len(self.on) != len(self.by):
            raise ValueError(f"on: {len(self.on)} columns for {len(self.by)} in by")
        return self

    def source_keys(self) -> tuple[str, ...]:
        """The qualified columns of `table` that match `by`."""
        return tuple(f"{self.table}.{c}" for c in (self.on or [b.split(".")[-1] for b in self.by]))


class HistorySpec(EventSource):
    """An aggregate as of t0 over earlier rows that share a key with the example: the earlier
    examples, each counted from when its value became known, or the rows of `table`, each
    from its time `at`. Only rows strictly before t0 count, with `window_s` only those of the
    last `window_s` seconds. `fn`: `count`, `sum` or `mean` of `of` (a task or numeric feature
    of the examples, or a numeric column of `table`), or `age`: seconds since the latest such
    row (recency)."""

    fn: Literal["count", "mean", "sum", "age"] = "count"
    of: str | None = None
    window_s: int | None = Field(default=None, gt=0)
    name: Name | None = None

    @model_validator(mode="after")
    def _needs_value(self) -> HistorySpec:
        if (self.fn in ("count", "age")) != (self.of is None):
            raise ValueError("count and age take no `of`; mean and sum need one")
        return self

    @property
    def feature(self) -> str:
        if self.name:
            return self.name
        parts = ["_".join(b.split(".")[-1] for b in self.by)]
        parts += [p for p in (self.table, self.of) if p]
        parts.append(self.fn)
        if self.window_s:
            parts.append(f"{self.window_s}s")
        return "_".join(parts)


class NextSpec(EventSource):
    """A label from what follows t0: the rows of `table` sharing the example's key at a moment
    after t0 and, with `within_s`, at most that many seconds after it (none: up to the data's
    end). A binary task is 1 when there is one, a regression counts them. With `within_s`, an
    example whose horizon passes the table's last moment (or, for a training example of a
    time split, the test period's start) is unknown (censored): the data cannot tell yet."""

    table: Name
    within_s: int | None = Field(default=None, gt=0)


class IdsSpec(Strict):
    """The example's columns that play the model's user, item and category ids (several
    columns: the hash of their values together; none: every example shares id 0)."""

    user: tuple[str, ...] = ()
    item: tuple[str, ...] = ()
    category: tuple[str, ...] = ()

    @model_validator(mode="before")
    @classmethod
    def _single(cls, raw: Any) -> Any:
        if isinstance(raw, dict):
            return {k: [v] if isinstance(v, str) else v for k, v in raw.items()}
        return raw


class SplitSpec(Strict):
    """Examples whose `column` (default: the unit's time) is at or after `test_start` are test
    (a unit table read from `files` per split needs none: its files split it)."""

    column: str | None = None
    test_start: str

    def start(self) -> float:
        """The test period's start, epoch seconds."""
        return _number(self.test_start, 0.0)


class TextSpec(Strict):
    """How text features become tokens: hashed character n-grams."""

    ngram_min: int = Field(default=2, ge=1)
    ngram_max: int = Field(default=5, ge=1)
    buckets: int = Field(default=262_144, ge=16)
    max_tokens: int = Field(default=512, ge=1)
    # Weigh each n-gram by its inverse document frequency in the training rows (else: mean).
    idf: bool = True


class ServingSpec(Strict):
    """Where the predictor finds each column a feature reads. `lookup` tables (entity
    attributes: a product, a seller) are read from the online store by the key their join
    names; every other column is a request-time field the request carries; history comes from
    the online store, as of its last materialisation."""

    lookup: tuple[Name, ...] = ()


class DatasetSchema(Strict):
    name: Name
    description: str = ""
    root: str = "."  # the folder of the tables' files (relative: to the working directory)
    tables: dict[Name, TableSpec]
    unit: Name  # one example per row of this table (after joins and filters)
    # t0: the qualified timestamp column of each example's moment; None for a log without
    # times (an impression log): t0 is then the row's position, and history is refused.
    time: str | None = None
    joins: tuple[JoinSpec, ...] = ()
    filters: tuple[FilterSpec, ...] = ()
    # Keep only each key's first example by t0 (a user's first view of an item).
    first_per: tuple[str, ...] = ()
    ids: IdsSpec = IdsSpec()
    features: dict[Name, ValueSpec] = {}
    history: tuple[HistorySpec, ...] = ()
    tasks: dict[Name, TaskSpec]
    split: SplitSpec | None = None
    text: TextSpec = TextSpec()
    categorical_buckets: int = Field(default=10_007, ge=2)
    serving: ServingSpec = ServingSpec()

    @field_validator("tasks")
    @classmethod
    def _some_task(cls, tasks: dict) -> dict:
        if not tasks:
            raise ValueError("declare at least one task")
        return tasks

    @model_validator(mode="after")
    def _references(self) -> DatasetSchema:
        problems: list[str] = []
        joined = [self.unit]
        if self.unit not in self.tables:
            raise ValueError(f"unit: no table {self.unit!r} (tables: {sorted(self.tables)})")
        for i, join in enumerate(self.joins):
            where = f"joins[{i}]"
            if join.table not in self.tables:
                problems.append(f"{where}.table: no table {join.table!r}")
                continue
            problems += self._refs(where + ".left", join.left, joined)
            right = join.right or self.tables[join.table].key
            if not right:
                problems.append(f"{where}: {join.table} has no key; name the `right` columns")
            elif len(right) != len(join.left):
                problems.append(f"{where}: {len(join.left)} left columns, {len(right)} right")
            cols = self.tables[join.table].columns
            for name in [*right, *([join.order_by] if join.order_by else [])]:
                if name not in cols:
                    problems.append(f"{where}: {join.table} has no column {name!r}")
            joined.append(join.table)
        scope = list(joined)
        if self.time is not None:
            problems += self._refs("time", [self.time], scope)
            if not problems and self.column(self.time).type != "timestamp":
                problems.append(f"time: {self.time} is not a timestamp column")
        for i, f in enumerate(self.filters):
            problems += self._refs(f"filters[{i}].column", [f.column], scope)
        problems += self._refs("first_per", self.first_per, scope)
        for role, refs in self.ids:
            problems += self._refs(f"ids.{role}", refs, scope)
        by_files = self.tables[self.unit].files is not None
        if (self.split is None) != by_files:
            problems.append("split: give it, unless the unit table's `files` split the data")
        elif self.split is not None:
            column = self.split.column or self.time
            if column is None:
                problems.append("split.column: needed when there is no time")
            else:
                problems += self._refs("split.column", [column], scope)
        for name, spec in {**self.features, **self.tasks}.items():
            kind = "tasks" if name in self.tasks else "features"
            found = self._refs(f"{kind}.{name}", spec.columns(), scope)
            problems += found
            if not found and spec.part and self.column(spec.column).type != "timestamp":
                problems.append(f"{kind}.{name}: part needs a timestamp column")
        for name, task in self.tasks.items():
            given = self.tasks.get(task.given) if task.given else None
            if task.given and (given is None or given.type != "binary"):
                problems.append(f"tasks.{name}.given: {task.given!r} is not a binary task")
            if task.next_ is not None:
                where = f"tasks.{name}.next"
                if self.time is None:
                    problems.append(f"{where}: needs `time` (what follows t0)")
                problems += self._refs(f"{where}.by", task.next_.by, scope)
                problems += self._source_table(where, task.next_)
        problems += self._lookups()
        if problems:
            raise ValueError("; ".join(problems))
        self._check_leaks()
        self._check_history()
        return self

    def _lookups(self) -> list[str]:
        joins = {j.table: j for j in self.joins}
        problems = []
        for name in self.serving.lookup:
            join, table = joins.get(name), self.tables.get(name)
            if join is None or table is None:
                problems.append(f"serving.lookup: {name!r} is not a joined table")
            elif table.known_at is not None:
                problems.append(f"serving.lookup: {name}'s rows arrive later ({table.known_at})")
            elif join.pick != "one" or (join.right and join.right != table.key) or not table.key:
                problems.append(f"serving.lookup: {name} must be joined by its key, one row each")
        return problems

    def join_of(self, table: str) -> JoinSpec:
        return next(j for j in self.joins if j.table == table)

    def _refs(self, where: str, refs: Any, scope: list[str]) -> list[str]:
        out = []
        for ref in refs:
            table, _, column = ref.partition(".")
            if not column:
                out.append(f"{where}: {ref!r} is not qualified as table.column")
            elif table not in scope:
                out.append(f"{where}: table {table!r} of {ref!r} is not joined (joined: {scope})")
            elif column not in self.tables[table].columns:
                out.append(f"{where}: {table} has no column {column!r} ({ref})")
        return out

    def column(self, ref: str) -> ColumnSpec:
        table, _, column = ref.partition(".")
        return self.tables[table].columns[column]

    def known_at(self, ref: str) -> str | None:
        """The qualified column holding when `ref`'s value became known; None: with the row."""
        table, _, column = ref.partition(".")
        own = self.tables[table].columns[column].known_at or self.tables[table].known_at
        return f"{table}.{own}" if own else None

    def known_at_t0(self, ref: str) -> bool:
        return self.known_at(ref) in (None, self.time)

    def _check_leaks(self) -> None:
        problems = []
        label_columns = {s.column: t for t, s in self.tasks.items() if s.column}  # labels read
        for name, spec in self.features.items():
            for ref in spec.columns():
                if not self.known_at_t0(ref):
                    problems.append(
                        f"features.{name} reads {ref}, known only at {self.known_at(ref)} (after "
                        f"t0 {self.time}): it could leak the future; use it through `history`"
                    )
                elif ref in label_columns:
                    problems.append(
                        f"features.{name} reads {ref}, the label of task {label_columns[ref]}"
                    )
        for role, refs in self.ids:
            for ref in refs:
                if not self.known_at_t0(ref):
                    problems.append(f"ids.{role} reads {ref}, known only at {self.known_at(ref)}")
        if problems:
            raise ValueError("; ".join(problems))

    def _check_history(self) -> None:
        problems, names = [], set(self.features) | set(self.tasks)
        if self.history and self.time is None:
            problems.append("history: needs `time` (what came before t0)")
        for i, h in enumerate(self.history):
            where = f"history[{i}]"
            problems += self._refs(f"{where}.by", h.by, [self.unit, *self.joined()])
            if h.table is not None:
                problems += self._source_table(where, h)
            elif h.of is not None and h.of not in names:
                problems.append(f"{where}.of: no task or feature {h.of!r}")
            elif h.of in self.tasks and self.tasks[h.of].next_ is not None:
                problems.append(
                    f"{where}.of: task {h.of!r} is read from later rows; aggregate its "
                    f"table {self.tasks[h.of].next_.table!r} instead (history with `table`)"
                )
            elif h.of in self.features and self.feature_kind(h.of) != "numeric":
                problems.append(f"{where}.of: feature {h.of!r} is not numeric")
            if h.feature in self.features:
                problems.append(f"{where}: {h.feature!r} is also a feature's name")
        names = [h.feature for h in self.history]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            problems.append(f"history: names {repeated} twice (give `name`)")
        if problems:
            raise ValueError("; ".join(problems))

    def _source_table(self, where: str, h: EventSource) -> list[str]:
        if h.table not in self.tables:
            return [f"{where}.table: no table {h.table!r}"]
        table = self.tables[h.table]
        problems = self._refs(f"{where}.on", h.source_keys(), [h.table])
        problems += self._refs(f"{where}.where", [f.column for f in h.where], [h.table])
        at = h.at or table.known_at
        if at is None:
            problems.append(f"{where}.at: {h.table} declares no known_at; name its time column")
        elif at not in table.columns or table.columns[at].type != "timestamp":
            problems.append(f"{where}.at: {at!r} is not a timestamp column of {h.table}")
        if isinstance(h, HistorySpec) and h.of is not None:
            column = table.columns.get(h.of)
            if column is None or column.type != "numeric":
                problems.append(f"{where}.of: {h.table} has no numeric column {h.of!r}")
        return problems

    def joined(self) -> list[str]:
        return [j.table for j in self.joins]

    def feature_kind(self, name: str) -> str:
        """numeric, categorical, bag (multi-valued categorical) or text."""
        spec = self.features[name]
        if spec.kind is not None:
            return spec.kind
        if spec.minus or spec.op or spec.part:
            return "numeric"
        return FEATURE_KINDS[self.column(spec.column).type]

    def features_of(self, kind: str) -> list[str]:
        """Declared features of one kind, in order; numeric ones end with the history's."""
        own = [n for n in self.features if self.feature_kind(n) == kind]
        return own + [h.feature for h in self.history] if kind == "numeric" else own

    def served_tasks(self) -> list[str]:
        return [n for n, t in self.tasks.items() if t.role == "served"]


def _merge(base: dict, child: dict) -> dict:
    """`child` over `base`: its tables added to (or replacing) the base's, any other key
    replacing the base's whole entry."""
    tables = {**(base.get("tables") or {}), **(child.get("tables") or {})}
    return {**base, **child, "tables": tables}


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ShopguideError(f"{path}: dataset schema not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (yaml.YAMLError, OSError, UnicodeDecodeError) as exc:
        raise ShopguideError(f"{path}: not a readable YAML file: {exc}") from exc
    if not isinstance(raw, dict):
        raise ShopguideError(f"{path}: expected a mapping at the top level")
    base = raw.pop("base", None)  # another schema file whose declarations this one extends
    if base is None:
        return raw
    if not isinstance(base, str):
        raise ShopguideError(f"{path}: base: expected a file name, got {reprlib.repr(base)}")
    return _merge(_read_yaml(path.parent / base), raw)


def load_schema(path: Path | str) -> DatasetSchema:
    """Read and validate a dataset schema; every problem is named at once, by field."""
    path = Path(path)
    raw = _read_yaml(path)
    try:
        return DatasetSchema.model_validate(raw)
    except ValidationError as exc:
        raise ShopguideError(f"{path}: invalid dataset schema\n{format_errors(exc)}") from exc


def saved_schema(folder: Path) -> DatasetSchema:
    """The schema saved in a model directory or generated Feast repo (`SCHEMA_FILE`)."""
    path = Path(folder) / SCHEMA_FILE
    if not path.is_file():
        raise ShopguideError(f"{folder}: no {SCHEMA_FILE} (not a declared dataset's model or repo)")
    return DatasetSchema.model_validate_json(path.read_text())
