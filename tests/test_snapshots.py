"""The snapshot builder against counts taken one row at a time, on real Taobao events."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shopguide.config import BEHAVIOURS, DataParams
from shopguide.duck import connect
from shopguide.feature_spec import WINDOW_HOURS, count_features, rate_features
from shopguide.snapshots import pass_metadata, pass_row_groups, snapshot_table, table_schema

ORIGIN = 1511481600  # midnight UTC before the protocol window


@pytest.fixture(scope="module")
def events(sample: Path) -> pd.DataFrame:
    """The events of 25 users of the sample plus hand-made ones at window edges."""
    raw = pd.read_csv(
        sample,
        names=["user_id", "item_id", "category_id", "behavior", "ts"],
        nrows=20_000,
    ).dropna()
    raw = raw[raw["user_id"].isin(raw["user_id"].unique()[:25]) & (raw["ts"] >= ORIGIN)]
    edges = pd.DataFrame(
        {
            "user_id": [-1, -1, -1, -1],
            "item_id": [1, 1, 1, 1],
            "category_id": [1, 1, 1, 1],
            "behavior": ["pv", "cart", "pv", "buy"],
            # two events in one second; one exactly 24 h later; one 72 h + 1 s later
            "ts": [ORIGIN + 10, ORIGIN + 10, ORIGIN + 10 + 86400, ORIGIN + 10 + 259201],
        }
    )
    return pd.concat([raw, edges], ignore_index=True).astype({"ts": "int64"})


def _seconds(rows: pd.DataFrame) -> pd.Series:
    return (rows["event_timestamp"] - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)


def _build(events: pd.DataFrame, interval: int) -> pd.DataFrame:
    con = connect(DataParams())
    con.register("events", events)
    table = snapshot_table(con, "user_id", "events", interval, ORIGIN // interval * interval)
    assert table.schema == table_schema("user_id")
    return table.to_pandas()


@pytest.mark.parametrize("interval", [1, 3600])
def test_every_count_is_the_events_strictly_before_the_row(
    events: pd.DataFrame, interval: int
) -> None:
    rows = _build(events, interval)
    times = _seconds(rows).to_numpy()[:, None]
    mine = rows["user_id"].to_numpy()[:, None] == events["user_id"].to_numpy()[None]
    before = mine & (events["ts"].to_numpy()[None] < times)  # (rows, events)
    for b in BEHAVIOURS:
        is_b = (events["behavior"] == b).to_numpy()[None]
        np.testing.assert_array_equal(rows[f"{b}_all"], (before & is_b).sum(axis=1))
        for h in WINDOW_HOURS:
            recent = before & is_b & (events["ts"].to_numpy()[None] >= times - h * 3600)
            np.testing.assert_array_equal(rows[f"{b}_{h}h"], recent.sum(axis=1), f"{b} {h}h")
    np.testing.assert_allclose(
        rows["cart_rate_all"], rows["cart_all"] / (rows["pv_all"] + 1.0), rtol=1e-6
    )


@pytest.mark.parametrize("interval", [1, 3600])
def test_rows_sit_where_a_value_changes(events: pd.DataFrame, interval: int) -> None:
    rows = _build(events, interval)
    times = _seconds(rows)
    ends = (events["ts"] // interval + 1) * interval
    expected = {(u, ORIGIN // interval * interval) for u in events["user_id"]}
    for shift in [0, *(h * 3600 for h in WINDOW_HOURS)]:
        expected |= set(zip(events["user_id"], ends + shift, strict=True))
    assert set(zip(rows["user_id"], times, strict=True)) == expected
    assert len(rows) == len(expected)  # one row per (entity, time)
    assert (rows.groupby("user_id")["event_timestamp"].diff().dropna() > pd.Timedelta(0)).all()


def test_the_edge_user_counts_by_hand(events: pd.DataFrame) -> None:
    rows = _build(events, 1).set_index("user_id").loc[-1]
    at = dict(zip(_seconds(rows), rows.itertuples(), strict=True))
    assert at[ORIGIN].pv_all == 0  # the origin row is before any event
    assert (at[ORIGIN + 11].pv_24h, at[ORIGIN + 11].cart_24h) == (1, 1)  # same second: both
    later = at[ORIGIN + 11 + 86400]  # the first pv leaves the 24 h window as the second enters
    assert (later.pv_24h, later.pv_72h, later.pv_all, later.cart_24h) == (1, 2, 2, 0)
    assert at[ORIGIN + 11 + 259200].pv_72h == 1  # the first pv leaves the 72 h window


def test_no_events_give_an_empty_table(events: pd.DataFrame) -> None:
    rows = _build(events.iloc[:0], 1)
    assert rows.empty
    assert list(rows.columns) == ["user_id", "event_timestamp", *count_features(), *rate_features()]


def test_pass_row_groups_follow_the_recorded_passes(tmp_path: Path) -> None:
    """Each pass's rows are found in its own row groups; an empty pass has none; a file
    without the record (written by another tool) is one pass."""
    schema = pa.schema([("user_id", pa.int64())])
    path = tmp_path / "t.parquet"
    with pq.ParquetWriter(path, schema) as writer:
        for rows in (25, 7):
            writer.write_table(pa.table({"user_id": range(rows)}), row_group_size=10)
        writer.add_key_value_metadata(pass_metadata([25, 0, 7]))
    assert pass_row_groups(pq.ParquetFile(path)) == [[0, 1, 2], [], [3]]
    pq.write_table(pa.table({"user_id": range(25)}), path, row_group_size=10)
    assert pass_row_groups(pq.ParquetFile(path)) == [[0, 1, 2]]
