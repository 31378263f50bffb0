"""Ingest and exposures on the real sample, and every kind of broken CSV."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from shopguide.adapters import ingest
from shopguide.config import Params
from shopguide.errors import ShopguideError
from shopguide.exposures import build_exposures
from shopguide.ingest import ingest_taobao

PARAMS = Params()


def test_sample_matches_protocol_taobao_mtl_v1(sample: Path, tmp_path: Path) -> None:
    summary = ingest_taobao(sample, tmp_path / "events.parquet", PARAMS.data)
    assert summary.rows == 84_475
    assert summary.malformed_rows == 1  # the truncated last line
    assert "line 84476" in summary.malformed_examples[0]
    events = pd.read_parquet(tmp_path / "events.parquet")
    assert list(events.columns) == ["user_id", "item_id", "category_id", "behavior", "ts"]
    assert set(events["behavior"]) == {"pv", "cart", "fav", "buy"}

    stats = build_exposures(tmp_path / "events.parquet", tmp_path / "exposures.parquet", PARAMS)
    assert stats["train"]["exposures"] == 44_312
    assert stats["test"]["exposures"] == 15_562
    assert (
        stats["test"]["cart_positives"],
        stats["test"]["fav_positives"],
        stats["test"]["buy_positives"],
    ) == (132, 46, 162)
    exposures = pd.read_parquet(tmp_path / "exposures.parquet").query("not sampled")
    assert not exposures.duplicated(["user_id", "item_id"]).any()
    assert (exposures["split"] == "test").eq(exposures["t0"] >= PARAMS.protocol.test_start).all()


def test_label_requires_behaviour_at_or_after_t0(tmp_path: Path) -> None:
    base = 1511600000
    rows = [
        (1, 10, 5, "cart", base - 10),  # before t0: not a cart label
        (1, 10, 5, "pv", base),
        (1, 10, 5, "buy", base),  # same second as t0 counts
        (1, 10, 5, "fav", base + 60),
        (2, 11, 5, "pv", base + 5),
    ] * 1
    csv = tmp_path / "tiny.csv"
    csv.write_text("\n".join(",".join(map(str, r)) for r in rows) + "\n")
    ingest_taobao(csv, tmp_path / "e.parquet", PARAMS.data)
    build_exposures(tmp_path / "e.parquet", tmp_path / "x.parquet", PARAMS)
    x = pd.read_parquet(tmp_path / "x.parquet").query("not sampled").set_index("user_id")
    assert (x.loc[1, "cart"], x.loc[1, "buy"], x.loc[1, "fav"]) == (0, 1, 1)
    assert x.loc[1, "t0"] == base
    assert (x.loc[2, ["cart", "fav", "buy"]] == 0).all()


def _good_rows(n: int = 50) -> list[str]:
    return [f"{1000 + i % 7},{2000 + i},{30 + i % 3},pv,{1511600000 + i}" for i in range(n)]


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("", "file is empty"),
        ("\n".join(r.rsplit(",", 1)[0] for r in _good_rows()) + "\n", "Expected Number of Columns"),
        (
            "\n".join(r.rsplit(",", 1)[0] + ",2017-11-26T10:00:00" for r in _good_rows()) + "\n",
            "column 'ts'",
        ),
        ("\n".join(_good_rows(40) + ["1,2,3,pv,notanumber"] * 5) + "\n", "5 of 45 rows"),
        # a line bad in four fields is one malformed row
        ("\n".join(_good_rows(40) + ["a,b,c,pv,d"] * 5) + "\n", "5 of 45 rows"),
        (bytes(range(256)).decode("latin-1") * 40, "not a plain-text CSV"),
    ],
    ids=[
        "empty",
        "missing-column",
        "non-numeric-timestamp",
        "too-many-bad-rows",
        "rows-bad-in-every-field",
        "binary",
    ],
)
def test_bad_csv_is_a_clear_error_and_writes_nothing(
    tmp_path: Path, content: str, expected: str
) -> None:
    csv = tmp_path / "bad.csv"
    csv.write_text(content)
    out = tmp_path / "out" / "events.parquet"
    with pytest.raises(ShopguideError) as err:
        ingest_taobao(csv, out, PARAMS.data)
    assert str(csv) in str(err.value)
    assert expected in str(err.value)
    assert not out.exists()
    assert not out.parent.exists() or not any(out.parent.iterdir())


def test_missing_source_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(ShopguideError, match="not found"):
        ingest_taobao(tmp_path / "nope.csv", tmp_path / "e.parquet", PARAMS.data)


def test_failed_ingest_keeps_previous_artifact(sample: Path, tmp_path: Path) -> None:
    out = tmp_path / "events.parquet"
    ingest_taobao(sample, out, PARAMS.data)
    before = out.read_bytes()
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n")
    with pytest.raises(ShopguideError):
        ingest_taobao(bad, out, PARAMS.data)
    assert out.read_bytes() == before


def test_ingest_replaces_events_and_exposures_together(sample: Path, tmp_path: Path) -> None:
    """Raw data whose events all fall outside the protocol window yields events but no
    exposures: the step fails and the previous pair stays, both tables, byte for byte."""
    events, exposures = tmp_path / "events.parquet", tmp_path / "exposures.parquet"
    queries = tmp_path / "queries.parquet"
    ingest(sample, events, exposures, queries, PARAMS)
    before = events.read_bytes(), exposures.read_bytes(), queries.read_bytes()
    late = tmp_path / "late.csv"
    late.write_text("".join(f"{u},7,3,pv,{PARAMS.protocol.window_end + u}\n" for u in range(1, 50)))
    with pytest.raises(ShopguideError, match="no exposures"):
        ingest(late, events, exposures, queries, PARAMS)
    assert (events.read_bytes(), exposures.read_bytes(), queries.read_bytes()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["events.parquet", "exposures.parquet", "queries.parquet", "late.csv"]
    )


def test_a_first_ingest_that_fails_leaves_no_tables(tmp_path: Path) -> None:
    late = tmp_path / "late.csv"
    late.write_text("".join(f"{u},7,3,pv,{PARAMS.protocol.window_end + u}\n" for u in range(1, 50)))
    out = tmp_path / "out"
    with pytest.raises(ShopguideError, match="no exposures"):
        ingest(late, out / "events.parquet", out / "exposures.parquet", out / "q.parquet", PARAMS)
    assert list(out.iterdir()) == []
