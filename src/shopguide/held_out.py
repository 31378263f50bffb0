"""The test split of a training set, read a row group at a time, for `evaluate` and the gate.

What scoring keeps is a few numbers a row (labels, probabilities, user, category, exposure
flag), never the table's hundreds of feature columns, so scoring a test split of any size
costs one row group of features; the category slices need only the training exposures per
category, counted in the same scan that finds the test rows.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from shopguide.errors import ShopguideError
from shopguide.model.base import ModelConfig
from shopguide.model.stream import TensorStream, parts_of, read_parts
from shopguide.model.tensors import exposures_of, to_tensors


def category_counts(categories: pd.Series) -> pd.Series:
    """Rows per category, most first, ties by category id (an order that does not depend on
    the rows' order, so counts merged part by part rank as the whole table's)."""
    return sort_counts(categories.value_counts())


def sort_counts(counts: pd.Series) -> pd.Series:
    frame = pd.DataFrame({"category": counts.index.astype(np.int64), "rows": counts.to_numpy()})
    frame = frame.sort_values(["rows", "category"], ascending=[False, True])
    return pd.Series(frame["rows"].to_numpy(np.int64), index=frame["category"].to_numpy())


def _test_rows(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[(frame["split"] == "test").to_numpy()].reset_index(drop=True)


@dataclass(frozen=True)
class HeldOut:
    """A training set's test rows as a stream of its row groups, and its train split's
    exposures per category (what the head / torso / tail slices are cut by)."""

    path: Path
    columns: tuple[str, ...]  # the table's
    rows: TensorStream
    train_category_exposures: pd.Series  # category id -> training exposures, most first

    @classmethod
    def of(cls, training_set: Path) -> HeldOut:
        """One scan of the split, category and sampled columns; an error names a missing file,
        a missing column or a split with no test rows."""
        path = Path(training_set)
        files = (path,)
        parts = parts_of(files)
        names = pq.ParquetFile(path).schema_arrow.names
        lacking = [c for c in ("split", "category_id", "user_id") if c not in names]
        if lacking:
            raise ShopguideError(f"{path}: no columns {lacking} (rebuild it: `shopguide features`)")
        columns = [c for c in ("split", "category_id", "sampled") if c in names]
        rows, counts = [], pd.Series(dtype=np.int64)
        for frame in read_parts(files, parts, columns):
            rows.append(int((frame["split"] == "test").sum()))
            train = frame[(frame["split"] == "train").to_numpy() & exposures_of(frame)]
            counts = counts.add(train["category_id"].value_counts(), fill_value=0)
        if not sum(rows):
            raise ShopguideError(f"{path}: no test exposures (check protocol.test_start)")
        stream = TensorStream(
            files=files, parts=tuple(parts), rows=tuple(rows), select=lambda _, f: _test_rows(f)
        )
        return cls(path, tuple(names), stream, sort_counts(counts.astype(np.int64)))

    def __len__(self) -> int:
        return len(self.rows)

    def frames(self, columns: Sequence[str] | None = None) -> Iterator[pd.DataFrame]:
        """The test rows a row group at a time (only `columns`, and the split column, when
        given), in file order."""
        if columns is None:
            return self.rows.frames()
        wanted = tuple(dict.fromkeys(["split", *columns]))
        return replace(self.rows, columns=wanted, _cache=[]).frames()

    def tensors(self, config: ModelConfig) -> TensorStream:
        """The test rows as the model's inputs and every head's labels."""
        heads = config.head_names()
        return self.rows.converting(lambda frame: to_tensors(frame, heads, config))

    def exposures(self, columns: Sequence[str]) -> pd.DataFrame:
        """`columns` of the test exposures (not the items sampled beside them), whole: a few
        columns of the rows, for what needs them together (the serving check's requests)."""
        read = [*columns, *(["sampled"] if "sampled" in self.columns else [])]
        frames = [f[exposures_of(f)][list(columns)] for f in self.frames(read)]
        return pd.concat(frames, ignore_index=True)
