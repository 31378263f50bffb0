"""Every fault the event validation must catch, each in a file that contains it: duplicate
events, purchases with no exposure, drift against the last accepted run (unknown behaviours and
out-of-window timestamps are in test_validation.py), and the CLI's exit code and message."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from shopguide.config import Params
from shopguide.drift import PROFILE_FILE
from shopguide.errors import ShopguideError
from shopguide.ingest import ingest_taobao
from shopguide.io import read_json
from shopguide.validation import (
    MAX_EXAMPLES,
    ValidationReport,
    raise_on_failure,
    validate_events,
)
from tests.conftest import write_params
from tests.test_cli import shopguide

PARAMS = Params()


@pytest.fixture(scope="module")
def sample_events(sample: Path, tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    out = tmp_path_factory.mktemp("faults") / "events.parquet"
    ingest_taobao(sample, out, PARAMS.data)
    return pd.read_parquet(out)


def failures(report: ValidationReport) -> set[tuple[str, str, str | None]]:
    return {(r["suite"], r["expectation"], r["column"]) for r in report.results if not r["success"]}


def message(report: ValidationReport, source: Path) -> str:
    with pytest.raises(ShopguideError) as err:
        raise_on_failure(report, source)
    return str(err.value)


def with_duplicates(frame: pd.DataFrame) -> pd.DataFrame:
    return pd.concat([frame, frame.iloc[[10, 20, 30]]], ignore_index=True)


def test_duplicate_events(sample_events: pd.DataFrame, tmp_path: Path) -> None:
    broken = tmp_path / "events.parquet"
    with_duplicates(sample_events).to_parquet(broken)
    report = validate_events(broken, PARAMS, tmp_path / "report")
    assert failures(report) == {("events", "expect_compound_columns_to_be_unique", None)}
    text = message(report, broken)
    assert "expect_compound_columns_to_be_unique" in text
    assert "'user_id', 'item_id', 'category_id', 'behavior', 'ts'" in text
    assert f"'user_id': {sample_events['user_id'].iloc[10]}" in text  # a sample row
    assert not (tmp_path / "report" / PROFILE_FILE).exists()  # a failed run is not accepted


def test_duplicates_within_max_duplicate_fraction_pass(
    sample_events: pd.DataFrame, tmp_path: Path
) -> None:
    """3 events twice in 84,478 rows: 6 rows (0.007%) in duplicate pairs."""
    events = tmp_path / "events.parquet"
    with_duplicates(sample_events).to_parquet(events)
    for fraction, passed in ((0.0001, True), (0.00005, False)):
        validation = PARAMS.validation.model_copy(update={"max_duplicate_fraction": fraction})
        params = PARAMS.model_copy(update={"validation": validation})
        report = validate_events(events, params, tmp_path / f"report-{fraction}")
        (result,) = [
            r for r in report.results if r["expectation"] == "expect_compound_columns_to_be_unique"
        ]
        assert result["success"] is passed and report.success is passed
        assert result["observed"]["unexpected_count"] == 6


def _negative_ids(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.copy()
    frame.loc[frame.index[7], "user_id"] = -5
    frame.loc[frame.index[[8, 9]], "item_id"] = -7
    return frame


def test_negative_ids_are_refused(sample_events: pd.DataFrame, tmp_path: Path) -> None:
    """As serving refuses them; a run with them must not become the accepted drift profile."""
    broken = tmp_path / "events.parquet"
    _negative_ids(sample_events).to_parquet(broken)
    report = validate_events(broken, PARAMS, tmp_path / "report")
    assert failures(report) == {
        ("events", "expect_column_values_to_be_between", "user_id"),
        ("events", "expect_column_values_to_be_between", "item_id"),
    }
    text = message(report, broken)
    assert "on column 'user_id': observed 1 of 84475 values unexpected" in text
    assert "on column 'item_id': observed 2 of 84475 values unexpected" in text
    assert not (tmp_path / "report" / PROFILE_FILE).exists()


def test_purchases_without_exposure(sample_events: pd.DataFrame, tmp_path: Path) -> None:
    n = 2000
    rng = np.random.default_rng(0)
    orphans = pd.DataFrame(
        {
            "user_id": 9_000_000 + np.arange(n),
            "item_id": 8_000_000 + np.arange(n),
            "category_id": 1,
            "behavior": "buy",
            "ts": rng.integers(PARAMS.protocol.window_start, PARAMS.protocol.window_end, n),
        }
    )
    broken = tmp_path / "events.parquet"
    pd.concat([sample_events, orphans], ignore_index=True).to_parquet(broken)
    report = validate_events(broken, PARAMS, tmp_path / "report")
    assert failures(report) == {("funnel", "expect_column_values_to_be_in_set", "exposed")}
    (funnel,) = [r for r in report.results if r["suite"] == "funnel"]
    # 829 of the sample's 1750 in-window-or-not buys lack a view; with 2000 orphans: ~75%.
    assert (
        funnel["observed"]["unexpected_percent"]
        > 100 * PARAMS.validation.max_unexposed_buy_fraction
    )
    text = message(report, broken)
    assert "on column 'exposed'" in text
    assert "'exposed': False" in text and "'user_id': " in text  # sample rows


def test_real_sample_buys_are_within_the_funnel_cap(
    sample_events: pd.DataFrame, tmp_path: Path
) -> None:
    events = tmp_path / "events.parquet"
    sample_events.to_parquet(events)
    report = validate_events(events, PARAMS, tmp_path / "report")
    assert report.success
    (funnel,) = [r for r in report.results if r["suite"] == "funnel"]
    assert 40 < funnel["observed"]["unexpected_percent"] < 60


def _shift_categories(frame: pd.DataFrame) -> pd.DataFrame:
    frame.loc[frame.index[::2], "category_id"] = 77_777_777
    return frame


def _views_to_carts(frame: pd.DataFrame) -> pd.DataFrame:
    views = frame.index[frame["behavior"] == "pv"]
    frame.loc[views[::3], "behavior"] = "cart"
    return frame


def _more_buys(frame: pd.DataFrame) -> pd.DataFrame:
    """A purchase right after one view in five: the buy rate of exposures jumps."""
    views = frame[frame["behavior"] == "pv"].iloc[::5].assign(behavior="buy")
    views["ts"] += 1
    return pd.concat([frame, views], ignore_index=True).drop_duplicates()


@pytest.fixture(scope="module")
def accepted_report_dir(
    sample_events: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A report dir whose accepted profile is the real sample's; checked on the way."""
    report_dir = tmp_path_factory.mktemp("accepted") / "report"
    accepted = report_dir.parent / "accepted.parquet"
    sample_events.to_parquet(accepted)
    first = validate_events(accepted, PARAMS, report_dir)
    assert first.success and not any(r["suite"] == "drift" for r in first.results)
    assert (report_dir / PROFILE_FILE).is_file()
    return report_dir


def test_same_data_again_does_not_drift(accepted_report_dir: Path, tmp_path: Path) -> None:
    report_dir = shutil.copytree(accepted_report_dir, tmp_path / "report")
    again = validate_events(accepted_report_dir.parent / "accepted.parquet", PARAMS, report_dir)
    drift = [r for r in again.results if r["suite"] == "drift"]
    assert again.success and len(drift) == 5  # behaviour, category, three task rates
    assert all(r["observed"]["unexpected_count"] == 0 for r in drift)


@pytest.mark.parametrize(
    ("mutate", "drifted"),
    [
        (_shift_categories, {"category_mix_psi"}),
        (_views_to_carts, {"behaviour_mix_psi"}),
        (_more_buys, {"behaviour_mix_psi", "buy_rate_psi"}),
    ],
    ids=["category-mix", "behaviour-mix", "positive-rate"],
)
def test_drift_against_last_accepted_run(
    sample_events: pd.DataFrame, accepted_report_dir: Path, tmp_path: Path, mutate, drifted
) -> None:
    report_dir = shutil.copytree(accepted_report_dir, tmp_path / "report")
    profile = (report_dir / PROFILE_FILE).read_bytes()
    frame = mutate(sample_events.copy())
    broken = tmp_path / "new.parquet"
    frame.to_parquet(broken)
    report = validate_events(broken, PARAMS, report_dir)
    assert {c for s, _, c in failures(report) if s == "drift"} == drifted
    assert f"max_value': {PARAMS.validation.max_drift_psi}" in str(
        [r["kwargs"] for r in report.results if r["suite"] == "drift"]
    )
    assert (report_dir / PROFILE_FILE).read_bytes() == profile  # still the accepted run's
    assert "drift" in (report_dir / "data_docs" / "index.html").read_text()


def test_cli_exits_non_zero_with_the_failed_expectation(
    sample_events: pd.DataFrame, tmp_path: Path, sample: Path
) -> None:
    broken = tmp_path / "events.parquet"
    with_duplicates(sample_events).to_parquet(broken)
    params = write_params(tmp_path, sample)
    out = shopguide(
        "validate", "--suite", "events", "--input", str(broken), "--params", str(params)
    )
    assert out.returncode == 2
    text = out.stdout + out.stderr
    assert "expect_compound_columns_to_be_unique" in text
    assert "Traceback" not in text


def test_cli_ingest_bad_rees46_leaves_no_output(tmp_path: Path, sample: Path) -> None:
    params = write_params(tmp_path, sample, data={"adapter": "rees46"})
    bad = tmp_path / "bad.csv"
    bad.write_text("event_time,event_type\n2019-10-01,view\n")
    events, exposures = tmp_path / "out/events.parquet", tmp_path / "out/exposures.parquet"
    out = shopguide(
        "ingest",
        "--source",
        str(bad),
        "--events",
        str(events),
        "--exposures",
        str(exposures),
        "--summary",
        str(tmp_path / "out/ingest.json"),
        "--params",
        str(params),
    )
    assert out.returncode == 2
    assert str(bad) in out.stdout + out.stderr
    assert "Traceback" not in out.stdout + out.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def _unknown_behaviour_out_of_window_null(frame: pd.DataFrame) -> pd.DataFrame:
    frame = with_duplicates(frame)
    frame.loc[frame.index[::700], "behavior"] = "click"
    rows = frame.index[5::50]
    frame.loc[rows, "ts"] = PARAMS.protocol.window_start - 3600 - np.arange(len(rows))
    frame["user_id"] = frame["user_id"].astype("Int64")
    frame.loc[frame.index[1:4], "user_id"] = pd.NA
    return frame


@pytest.mark.parametrize(
    "mutate",
    [lambda f: f, _unknown_behaviour_out_of_window_null, _negative_ids],
    ids=["clean", "faults", "negative-ids"],
)
def test_large_tables_are_checked_on_a_sample_with_exact_verdicts(
    sample_events: pd.DataFrame, tmp_path: Path, mutate
) -> None:
    """Past `validation.in_memory_rows`, GX sees a sample that keeps offending rows, and every
    verdict and count is the one the whole table gives."""
    path = tmp_path / "events.parquet"
    events = mutate(sample_events.copy())
    events.to_parquet(path)
    whole = validate_events(path, PARAMS, tmp_path / "whole")
    sampled_params = PARAMS.model_copy(
        update={
            "validation": PARAMS.validation.model_copy(
                update={"in_memory_rows": 10_000, "sample_rows": 5_000}
            )
        }
    )
    sampled = validate_events(path, sampled_params, tmp_path / "sampled")
    assert read_json(sampled.json_path)["validated_rows"] < 6_000
    assert sampled.success == whole.success
    by_key = {(r["suite"], r["expectation"], r["column"]): r for r in whole.results}
    assert len(sampled.results) == len(by_key)
    for result in sampled.results:
        reference = by_key[result["suite"], result["expectation"], result["column"]]
        assert result["success"] == reference["success"], result
        if isinstance(reference["observed"], dict):
            assert (
                result["observed"]["unexpected_count"] == reference["observed"]["unexpected_count"]
            )
            assert result["observed"]["element_count"] == reference["observed"]["element_count"]
            assert result["observed"]["unexpected_percent"] == pytest.approx(
                reference["observed"]["unexpected_percent"]
            )
        else:
            assert result["observed"] == reference["observed"], result
    if mutate is _unknown_behaviour_out_of_window_null:
        text = message(sampled, path)
        for needle in ("'click'", str(PARAMS.protocol.window_start - 3600), "3 of 84478 values"):
            assert needle in text
        assert f"'user_id': {sample_events['user_id'].iloc[10]}" in text  # a duplicated row
        # The examples are the file's first offenders, the same on every run.
        ts, window = events["ts"], PARAMS.protocol
        first = ts[(ts < window.window_start) | (ts > window.window_end - 1)].head(MAX_EXAMPLES)
        (reported,) = [
            r for r in sampled.results if r["column"] == "ts" and "between" in r["expectation"]
        ]
        assert [e["ts"] for e in reported["unexpected_examples"]] == first.tolist()
