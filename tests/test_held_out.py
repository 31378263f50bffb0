"""The test split read a row group at a time (`shopguide.held_out`): the same rows, counts and
columns as the whole table gives, and errors that name the file and what is wrong."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from shopguide.errors import ShopguideError
from shopguide.held_out import HeldOut, category_counts


def _table(rows: int = 5_000, seed: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "user_id": rng.integers(0, 300, rows),
            "item_id": rng.integers(0, 2_000, rows),
            "category_id": rng.integers(0, 40, rows),
            "t0": np.sort(rng.integers(0, 10**6, rows)),
            "split": np.where(np.arange(rows) < rows * 0.7, "train", "test"),
            "sampled": rng.random(rows) < 0.5,
            "cart": rng.integers(0, 2, rows).astype(float),
        }
    )


def _write(frame: pd.DataFrame, path: Path, group_rows: int = 700) -> Path:
    frame.to_parquet(path, index=False, row_group_size=group_rows)
    assert pq.ParquetFile(path).num_row_groups > 3
    return path


def test_the_parts_give_the_whole_tables_test_rows_and_counts(tmp_path: Path) -> None:
    frame = _table()
    held = HeldOut.of(_write(frame, tmp_path / "t.parquet"))
    test = frame[frame["split"] == "test"].reset_index(drop=True)
    assert len(held) == len(test)
    pd.testing.assert_frame_equal(pd.concat(held.frames(), ignore_index=True), test)
    train = frame[(frame["split"] == "train") & ~frame["sampled"]]
    pd.testing.assert_series_equal(
        held.train_category_exposures, category_counts(train["category_id"]), check_names=False
    )
    counts = held.train_category_exposures.to_numpy()
    assert (np.diff(counts) <= 0).all()  # most first
    exposures = held.exposures(["user_id", "t0"])
    expected = test.loc[~test["sampled"], ["user_id", "t0"]].reset_index(drop=True)
    pd.testing.assert_frame_equal(exposures, expected)


def test_ties_rank_by_category_whatever_the_row_order() -> None:
    categories = pd.Series([5, 3, 5, 3, 9])
    assert category_counts(categories).index.tolist() == [3, 5, 9]
    assert category_counts(categories[::-1]).index.tolist() == [3, 5, 9]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda f: f.assign(split="train"), "no test exposures"),
        (lambda f: f.drop(columns=["category_id"]), r"no columns \['category_id'\]"),
    ],
)
def test_a_table_it_cannot_score_is_an_error_naming_the_file(
    tmp_path: Path, change, message: str
) -> None:
    path = _write(change(_table()), tmp_path / "bad.parquet")
    with pytest.raises(ShopguideError, match=rf"bad\.parquet.*{message}"):
        HeldOut.of(path)
    with pytest.raises(ShopguideError, match=r"missing\.parquet: not found"):
        HeldOut.of(tmp_path / "missing.parquet")
