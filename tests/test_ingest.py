"""Ingest and exposures on the real sample, and every kind of broken CSV."""

from __future__ import annotations

import json
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


# --- issue 27: files as they come ---------------------------------------------------------------


def test_a_huge_malformed_line_is_cut_in_the_examples(tmp_path: Path) -> None:
    """One 3 MB line among good rows: dropped, and reported in a few hundred characters."""
    csv = tmp_path / "long.csv"
    rows = _good_rows(2_000)
    csv.write_text("\n".join([*rows[:1_000], "1,2,3,pv," + "x" * 3_000_000, *rows[1_000:]]) + "\n")
    events, exposures = tmp_path / "events.parquet", tmp_path / "exposures.parquet"
    card = ingest(csv, events, exposures, tmp_path / "queries.parquet", PARAMS)
    assert card["malformed_rows"] == 1
    for example in card["malformed_examples"]:  # one per problem DuckDB found in the line
        assert example.startswith("line 1001:") and "characters)" in example
        assert len(example) < 600
    assert len(json.dumps(card)) < 5_000


def test_a_directory_as_source_says_so(tmp_path: Path) -> None:
    with pytest.raises(ShopguideError, match="is a directory, expected the raw events file"):
        ingest_taobao(tmp_path, tmp_path / "e.parquet", PARAMS.data)


@pytest.mark.parametrize(
    ("encoding", "named"),
    [
        ("utf-16", "UTF-16 (little-endian)"),
        ("utf-16-be", "UTF-16 (big-endian, no byte-order mark)"),
        ("utf-32", "UTF-32 (little-endian)"),
    ],
)
def test_utf16_or_32_input_names_its_encoding(tmp_path: Path, encoding: str, named: str) -> None:
    csv = tmp_path / "wide.csv"
    csv.write_bytes(("\n".join(_good_rows()) + "\n").encode(encoding))
    with pytest.raises(ShopguideError) as err:
        ingest_taobao(csv, tmp_path / "e.parquet", PARAMS.data)
    assert f"the file is {named} text; expected UTF-8" in str(err.value)
    assert "iconv" in str(err.value)


@pytest.mark.parametrize("split", [1, 25, 49], ids=["first-crlf", "middle", "last-lf"])
def test_mixed_crlf_and_lf_line_endings_are_read(
    tmp_path: Path, split: int, caplog: pytest.LogCaptureFixture
) -> None:
    rows = _good_rows()
    lf = tmp_path / "lf.csv"
    lf.write_text("\n".join(rows) + "\n")
    mixed = tmp_path / "mixed.csv"
    endings = ["\r\n"] * split + ["\n"] * (len(rows) - split)
    mixed.write_bytes("".join(r + end for r, end in zip(rows, endings, strict=True)).encode())
    ingest_taobao(lf, tmp_path / "lf.parquet", PARAMS.data)
    summary = ingest_taobao(mixed, tmp_path / "mixed.parquet", PARAMS.data)
    assert summary.rows == 50 and summary.malformed_rows == 0
    pd.testing.assert_frame_equal(
        pd.read_parquet(tmp_path / "mixed.parquet").sort_values("ts", ignore_index=True),
        pd.read_parquet(tmp_path / "lf.parquet").sort_values("ts", ignore_index=True),
    )
    assert "mixes CRLF and LF line endings" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["lf.csv", "mixed.csv", "lf.parquet", "mixed.parquet"]
    )


@pytest.mark.parametrize("output", ["events", "exposures"])
def test_an_output_path_that_is_a_directory_is_refused(tmp_path: Path, output: str) -> None:
    csv = tmp_path / "good.csv"
    csv.write_text("\n".join(_good_rows()) + "\n")
    paths = {"events": tmp_path / "events.parquet", "exposures": tmp_path / "exposures.parquet"}
    paths[output].mkdir()
    (paths[output] / "keep.txt").write_text("mine")
    with pytest.raises(ShopguideError, match="is a directory; expected a file path"):
        ingest(csv, paths["events"], paths["exposures"], tmp_path / "queries.parquet", PARAMS)
    assert (paths[output] / "keep.txt").read_text() == "mine"


def test_drop_duplicate_events_counts_them_on_the_card(sample: Path, tmp_path: Path) -> None:
    doubled = tmp_path / "doubled.csv"
    lines = sample.read_text().splitlines()
    doubled.write_text("\n".join([*lines[:-1], *lines[100:110], lines[-1]]) + "\n")
    data = PARAMS.data.model_copy(update={"drop_duplicate_events": True})
    events, exposures = tmp_path / "events.parquet", tmp_path / "exposures.parquet"
    queries = tmp_path / "queries.parquet"
    card = ingest(doubled, events, exposures, queries, PARAMS.model_copy(update={"data": data}))
    assert card["duplicate_events_dropped"] == 10
    assert card["events"]["rows"] == 84_475
    assert not pd.read_parquet(events).duplicated().any()
    kept = ingest(
        doubled, events, exposures, queries, PARAMS
    )  # the option off: kept, for validation
    assert kept["duplicate_events_dropped"] == 0 and kept["events"]["rows"] == 84_485
