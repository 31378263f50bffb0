"""Great Expectations suites on the real Taobao sample and on a fabricated training set."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from shopguide.config import Params
from shopguide.errors import ShopguideError
from shopguide.ingest import ingest_taobao
from shopguide.io import read_json
from shopguide.validation import (
    ValidationReport,
    raise_on_failure,
    validate_events,
    validate_training_set,
)

PARAMS = Params()
WINDOW_START = PARAMS.protocol.window_start


@pytest.fixture(scope="module")
def events(tmp_path_factory: pytest.TempPathFactory, sample: Path) -> Path:
    """The real sample's event table (the sample's location: tests/conftest.py)."""
    out = tmp_path_factory.mktemp("ingest") / "events.parquet"
    ingest_taobao(sample, out, PARAMS.data)
    return out


def training_frame(rows: int = 2000, seed: int = 0) -> pd.DataFrame:
    """A training set shaped like the features step output, with sane labels and features."""
    rng = np.random.default_rng(seed)
    t0 = rng.integers(WINDOW_START, PARAMS.protocol.window_end, rows)
    frame = pd.DataFrame(
        {
            "user_id": rng.integers(1, 1000, rows),
            "item_id": rng.integers(1, 5000, rows),
            "category_id": rng.integers(1, 50, rows),
            "t0": t0,
            "event_timestamp": pd.to_datetime(t0, unit="s", utc=True),
        }
    )
    for task in PARAMS.protocol.tasks:
        frame[task] = (rng.random(rows) < 0.05).astype("int64")
    frame["split"] = np.where(t0 < PARAMS.protocol.test_start, "train", "test")
    frame["user_stats__pv_24h"] = rng.poisson(3, rows).astype("float64")
    frame["item_stats__cart_72h"] = rng.exponential(1.0, rows)
    return frame


def failed(report: ValidationReport) -> set[tuple[str, str | None]]:
    return {(r["expectation"], r["column"]) for r in report.results if not r["success"]}


def assert_artifacts(report: ValidationReport) -> None:
    payload = read_json(report.json_path)
    assert report.json_path.name == f"{report.suite}.json"
    assert payload["success"] is report.success
    assert len(payload["results"]) == len(report.results)
    assert report.docs_path.name == "index.html"
    assert report.docs_path.is_file()
    assert "<html" in report.docs_path.read_text().lower()
    assert validation_pages(report)


def validation_pages(report: ValidationReport) -> list[Path]:
    """Data Docs pages of individual runs of this suite, one per run."""
    return list((report.docs_path.parent / "validations" / report.suite).rglob("*.html"))


def test_real_sample_events_pass(events: Path, tmp_path: Path) -> None:
    report = validate_events(events, PARAMS, tmp_path)
    assert report.success, failed(report)
    raise_on_failure(report, events)
    assert_artifacts(report)
    (window,) = [r for r in report.results if r["column"] == "ts" and "between" in r["expectation"]]
    assert window["observed"]["unexpected_count"] == 35
    assert window["observed"]["element_count"] == 84_475


def _click(df: pd.DataFrame) -> None:
    df.loc[df.index[::500], "behavior"] = "click"


def _out_of_window(df: pd.DataFrame) -> None:
    # Distinct times, so the change makes no duplicate events on top.
    rows = df.index[::50]
    df.loc[rows, "ts"] = WINDOW_START - 3600 - np.arange(len(rows))


def _null_user(df: pd.DataFrame) -> None:
    df["user_id"] = df["user_id"].astype("Int64")
    df.loc[df.index[:3], "user_id"] = pd.NA


@pytest.mark.parametrize(
    ("mutate", "expectation", "column", "example"),
    [
        (_click, "expect_column_values_to_be_in_set", "behavior", "'click'"),
        (_out_of_window, "expect_column_values_to_be_between", "ts", str(WINDOW_START - 3600)),
        (_null_user, "expect_column_values_to_not_be_null", "user_id", "3 of 84475 values"),
    ],
    ids=["unknown-behaviour", "ts-out-of-window", "null-key"],
)
def test_broken_events_fail(
    events: Path,
    tmp_path: Path,
    mutate: Callable[[pd.DataFrame], None],
    expectation: str,
    column: str,
    example: str,
) -> None:
    frame = pd.read_parquet(events)
    mutate(frame)
    broken = tmp_path / "events.parquet"
    frame.to_parquet(broken)

    report = validate_events(broken, PARAMS, tmp_path / "report")

    assert not report.success
    assert failed(report) == {(expectation, column)}
    assert_artifacts(report)
    with pytest.raises(ShopguideError) as err:
        raise_on_failure(report, broken)
    message = str(err.value)
    for needle in (str(broken), expectation, f"'{column}'", example):
        assert needle in message
    assert str(report.json_path) in message
    assert str(report.docs_path) in message


def test_reruns_share_report_dir_and_pick_up_new_thresholds(events: Path, tmp_path: Path) -> None:
    """The pipeline validates both tables into one report dir, run after run."""
    training = tmp_path / "training.parquet"
    training_frame().to_parquet(training)
    report_dir = tmp_path / "report"
    assert validate_events(events, PARAMS, report_dir).success
    assert validate_training_set(training, PARAMS, report_dir).success

    strict = Params.model_validate({"validation": {"min_events": 100_000}})
    report = validate_events(events, strict, report_dir)
    assert failed(report) == {("expect_table_row_count_to_be_between", None)}
    assert_artifacts(report)
    assert len(validation_pages(report)) == 2
    assert validate_training_set(training, strict, report_dir).success
    assert read_json(report_dir / "training_set.json")["success"] is True


def test_unreadable_events_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.parquet"
    with pytest.raises(
        ShopguideError, match=re.escape(f"{missing}: Parquet file to validate not found")
    ):
        validate_events(missing, PARAMS, tmp_path / "report")
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"not parquet at all")
    with pytest.raises(ShopguideError, match=re.escape(f"{garbage}: cannot read as Parquet")):
        validate_events(garbage, PARAMS, tmp_path / "report")


# The large-table path: GX on a sample, every verdict counted by DuckDB over every row.
SAMPLED = PARAMS.model_copy(
    update={"validation": PARAMS.validation.model_copy(update={"training_sample_rows": 100})}
)


@pytest.mark.parametrize("params", [PARAMS, SAMPLED], ids=["whole", "sampled"])
def test_training_set_passes(tmp_path: Path, params: Params) -> None:
    path = tmp_path / "training.parquet"
    training_frame().to_parquet(path)
    report = validate_training_set(path, params, tmp_path / "report")
    assert report.success, failed(report)
    raise_on_failure(report, path)
    assert_artifacts(report)
    checked = {r["column"] for r in report.results}
    assert {"user_stats__pv_24h", "item_stats__cart_72h", *PARAMS.protocol.tasks} <= checked


def _label_two(df: pd.DataFrame) -> None:
    df.loc[df.index[:4], "buy"] = 2


def _cart_rate_high(df: pd.DataFrame) -> None:
    df["cart"] = np.arange(len(df)) % 2


def _negative_feature(df: pd.DataFrame) -> None:
    df.loc[df.index[:2], "item_stats__cart_72h"] = -1.5


@pytest.mark.parametrize(
    ("mutate", "expectation", "column", "example"),
    [
        (_label_two, "expect_column_values_to_be_in_set", "buy", "[2]"),
        (_cart_rate_high, "expect_column_mean_to_be_between", "cart", "observed 0.5"),
        (_negative_feature, "expect_column_values_to_be_between", "item_stats__cart_72h", "-1.5"),
    ],
    ids=["label-two", "positive-rate-above-max", "negative-feature"],
)
@pytest.mark.parametrize("size", ["whole", "sampled"])
def test_broken_training_set_fails(
    tmp_path: Path,
    mutate: Callable[[pd.DataFrame], None],
    expectation: str,
    column: str,
    example: str,
    size: str,
) -> None:
    """Past `validation.training_sample_rows` GX sees a sample with the offending rows, and every
    verdict, count and label mean is computed over all the rows: the same failure, the same
    example values."""
    frame = training_frame()
    mutate(frame)
    path = tmp_path / "training.parquet"
    frame.to_parquet(path)
    params = PARAMS if size == "whole" else SAMPLED

    report = validate_training_set(path, params, tmp_path / "report")

    assert not report.success
    assert failed(report) == {(expectation, column)}
    assert read_json(report.json_path)["validated_rows"] < (
        len(frame) if size == "sampled" else 10**9
    )
    (result,) = [r for r in report.results if not r["success"]]
    if isinstance(result["observed"], dict):  # counted over every row, not the sample's
        assert result["observed"]["element_count"] == len(frame)
    assert_artifacts(report)
    with pytest.raises(ShopguideError) as err:
        raise_on_failure(report, path)
    for needle in (expectation, f"'{column}'", example):
        assert needle in str(err.value)


def test_training_set_missing_label_column_fails(tmp_path: Path) -> None:
    path = tmp_path / "training.parquet"
    training_frame().drop(columns=["fav"]).to_parquet(path)
    report = validate_training_set(path, PARAMS, tmp_path / "report")
    assert ("expect_column_to_exist", "fav") in failed(report)
    assert_artifacts(report)
