"""Every dataset adapter on real rows (Taobao sample, torch-rechub fixtures) or, for REES46, on
rows written to its published format; bad input is a clear error that writes nothing."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from shopguide.adapters import ingest
from shopguide.config import TASKS, Params
from shopguide.errors import ShopguideError
from shopguide.validation import validate_events
from tests.conftest import FIXTURES

TAOBAO = Params()
IMPRESSION_PARAMS = {"protocol": {"tasks": ["click", "buy"]}, "validation": {"min_events": 10}}
# 2019-10-01 00:00:00 UTC .. 2019-10-08; test from 2019-10-06.
REES46_PROTOCOL = {
    "window_start": 1569888000,
    "window_end": 1570492800,
    "test_start": 1570320000,
    "tasks": ["cart", "buy"],
}
REES46_HEADER = (
    "event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session"
)


def params(adapter: str, **sections: dict) -> Params:
    """Params for `adapter`, with per-task settings for exactly the tasks its protocol names."""
    tasks = sections.get("protocol", {}).get("tasks", TASKS)
    raw = {
        "validation": {"positive_rate": {t: {"min": 0.0, "max": 1.0} for t in tasks}},
        "gate": {"auc_floor": dict.fromkeys(tasks, 0.5), "gauc_floor": {}},
        "serving": {"ranking_weights": dict.fromkeys(tasks, 1.0)},
    }
    for section, values in sections.items():
        raw[section] = {**raw.get(section, {}), **values}
    return Params.model_validate({**raw, "data": {**raw.get("data", {}), "adapter": adapter}})


def outputs(tmp_path: Path) -> tuple[Path, Path, Path]:
    out = tmp_path / "out"
    return out / "events.parquet", out / "exposures.parquet", out / "queries.parquet"


def test_taobao_card_matches_protocol(sample: Path, tmp_path: Path) -> None:
    events, exposures, queries = outputs(tmp_path)
    card = ingest(sample, events, exposures, queries, TAOBAO)
    assert card["adapter"] == "taobao"
    assert card["events"]["rows"] == 84_475
    assert card["events"]["behaviours"] == {"buy": 1750, "cart": 4497, "fav": 2356, "pv": 75872}
    assert card["exposures"]["train"]["exposures"] == 44_312
    assert card["exposures"]["test"]["exposures"] == 15_562
    assert card["exposures"]["test"]["positive_rate"]["buy"] == pytest.approx(162 / 15_562)
    assert card["malformed_rows"] == 1
    assert "proposed_split" not in card  # 44,312 train against 15,562 test: no warning


@pytest.mark.parametrize("horizon", [None, 10_800])
def test_a_window_that_leaves_a_tiny_train_split_is_warned_about(
    sample: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, horizon: int | None
) -> None:
    """test_start a few hours into the sample's window: the card proposes a test_start that
    leaves about the last quarter of the exposures for testing, and its counts are what an
    ingest with that test_start gives (with a label horizon, which exposures are censored
    depends on test_start). Sampled rows are no exposures and count for neither."""
    early = TAOBAO.protocol.window_start + 20_000
    protocol = TAOBAO.protocol.model_copy(update={"test_start": early, "label_horizon_s": horizon})
    events, exposures, queries = outputs(tmp_path)
    card = ingest(
        sample, events, exposures, queries, TAOBAO.model_copy(update={"protocol": protocol})
    )
    train, test = (card["exposures"][s]["exposures"] for s in ("train", "test"))
    assert 0 < train < test / 10
    x = pd.read_parquet(exposures).query("not sampled")
    assert ((x["split"] == "train").sum(), (x["split"] == "test").sum()) == (train, test)
    proposed = card["proposed_split"]
    counts = proposed["train_exposures"], proposed["test_exposures"]
    assert counts[1] / sum(counts) == pytest.approx(0.25, abs=0.01)
    assert protocol.window_start < proposed["protocol.test_start"] < protocol.window_end
    assert f"leaves {train} train against {test} test exposures" in caplog.text
    if horizon is None:  # nothing censored: the same exposures, split at another moment
        assert sum(counts) == train + test
        assert (x["t0"] < proposed["protocol.test_start"]).sum() == counts[0]
    else:  # the rows within the horizon of either test_start are not the same ones
        assert sum(counts) != train + test

    again = protocol.model_copy(update={"test_start": proposed["protocol.test_start"]})
    card = ingest(
        sample, *outputs(tmp_path / "again"), TAOBAO.model_copy(update={"protocol": again})
    )
    assert tuple(card["exposures"][s]["exposures"] for s in ("train", "test")) == counts
    assert "proposed_split" not in card


HEATER = "3900821,2053013552326770905,appliances.environment.water_heater,aqua"
PHONE = "1004856,2053013555631882655,electronics.smartphone,samsung"


def rees46_rows() -> list[str]:
    return [
        "2019-10-01 00:00:04 UTC,view,44600062,2103807459595387724,,shiseido,35.79,541312140,s1",
        f"2019-10-01 00:01:00 UTC,view,{HEATER},33.20,554748717,s2",
        f"2019-10-01 00:02:00 UTC,cart,{HEATER},33.20,554748717,s2",
        f"2019-10-01 00:03:00 UTC,remove_from_cart,{HEATER},33.20,554748717,s2",
        f"2019-10-02 09:00:00 UTC,purchase,{HEATER},31.50,554748717,s3",
        f"2019-10-02 10:00:00 UTC,purchase,{PHONE},130.76,541312140,s4",
        f"2019-10-03 10:00:00 UTC,view,{PHONE},130.76,541312140,s5",
        "2019-10-06 12:00:00 UTC,view,17300353,2053013553853497655,,,11.11,554748717,s6",
        "2019-10-06 12:05:00 UTC,view,17300353,2053013553853497655,,,11.11,554748717,s6",
    ]


def test_rees46_rows_in_published_format(tmp_path: Path) -> None:
    csv = tmp_path / "2019-Oct.csv"
    csv.write_text("\n".join([REES46_HEADER, *rees46_rows()]) + "\n")
    events, exposures, queries = outputs(tmp_path)
    card = ingest(csv, events, exposures, queries, params("rees46", protocol=REES46_PROTOCOL))

    ev = pd.read_parquet(events)
    assert list(ev.columns) == ["user_id", "item_id", "category_id", "behavior", "ts"]
    assert sorted(ev["behavior"].unique()) == ["buy", "cart", "pv"]  # remove_from_cart dropped
    assert len(ev) == 8 and card["remove_from_cart_rows"] == 1
    assert ev["ts"].min() == 1569888004  # 2019-10-01 00:00:04 UTC
    assert ev["category_id"].max() == 2103807459595387724

    x = pd.read_parquet(exposures).query("not sampled").set_index(["user_id", "item_id"])
    heater = x.loc[(554748717, 3900821)]
    assert (heater["t0"], heater["cart"], heater["buy"]) == (1569888060, 1, 1)
    # Bought before the first view: not a label of that exposure.
    phone = x.loc[(541312140, 1004856)]
    assert (phone["cart"], phone["buy"]) == (0, 0)
    assert x.loc[(554748717, 17300353), "split"] == "test"
    assert len(x) == 4

    items = pd.read_parquet(tmp_path / "out/item_features.parquet").set_index("item_id")
    assert items.loc[3900821, ["category_l1", "category_l2", "category_l3"]].tolist() == [
        "appliances",
        "environment",
        "water_heater",
    ]
    assert items.loc[3900821, "price"] == pytest.approx(31.50)  # latest price
    assert items.loc[3900821, "brand"] == "aqua"
    assert pd.isna(items.loc[44600062, "category_l1"])
    assert card["events"]["users"] == 2 and card["events"]["items"] == 4
    assert card["exposures"]["train"]["positive_rate"]["cart"] == pytest.approx(1 / 3)


def test_rees46_unknown_event_type_reaches_validation(tmp_path: Path) -> None:
    csv = tmp_path / "2019-Oct.csv"
    rows = [*rees46_rows(), "2019-10-03 10:00:00 UTC,wishlist,1004856,1,,,1.0,541312140,s9"]
    csv.write_text("\n".join([REES46_HEADER, *rows]) + "\n")
    events, exposures, queries = outputs(tmp_path)
    p = params("rees46", protocol=REES46_PROTOCOL, validation={"min_events": 1})
    ingest(csv, events, exposures, queries, p)
    report = validate_events(events, p, tmp_path / "report")
    failed = [r for r in report.results if not r["success"]]
    assert [(r["expectation"], r["column"]) for r in failed] == [
        ("expect_column_values_to_be_in_set", "behavior")
    ]
    assert failed[0]["unexpected_examples"][0]["behavior"] == "wishlist"


def test_rees46_crlf_file_whose_last_line_ends_in_lf(tmp_path: Path) -> None:
    """The issue's reproduction: a header and two rows, the first ending in CRLF, the last
    in a bare LF (DuckDB's parser refuses the mix; the adapter reads an LF copy)."""
    first, second = rees46_rows()[:2]
    csv = tmp_path / "2019-Oct.csv"
    csv.write_bytes(f"{REES46_HEADER}\r\n{first}\r\n{second}\n".encode())
    events, exposures, queries = outputs(tmp_path)
    card = ingest(csv, events, exposures, queries, params("rees46", protocol=REES46_PROTOCOL))
    assert card["events"]["rows"] == 2 and card["malformed_rows"] == 0
    assert sorted(pd.read_parquet(events)["item_id"]) == [3900821, 44600062]


def test_rees46_exact_duplicates_dropped_on_request(tmp_path: Path) -> None:
    rows = rees46_rows()
    csv = tmp_path / "2019-Oct.csv"
    csv.write_text("\n".join([REES46_HEADER, *rows, rows[1], rows[4], rows[4]]) + "\n")
    events, exposures, queries = outputs(tmp_path)
    kept = ingest(csv, events, exposures, queries, params("rees46", protocol=REES46_PROTOCOL))
    assert (kept["events"]["rows"], kept["duplicate_events_dropped"]) == (11, 0)
    dedupe = params(
        "rees46",
        protocol=REES46_PROTOCOL,
        data={"drop_duplicate_events": True},
        validation={"min_events": 1},
    )
    card = ingest(csv, events, exposures, queries, dedupe)
    assert (card["events"]["rows"], card["duplicate_events_dropped"]) == (8, 3)
    assert validate_events(events, dedupe, tmp_path / "report").success


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (REES46_HEADER + "\n2019/10/01 00:00:04,view,1,2,,,1.0,3,s\n", "event_time not like"),
        (
            REES46_HEADER + "\n" + "2019-10-01 00:00:04 UTC,view,x,2,,,1.0,3,s\n" * 3,
            "column 'product_id'",
        ),
        ("", "file is empty"),
    ],
    ids=["bad-time", "non-numeric-id", "empty"],
)
def test_rees46_bad_input_writes_nothing(tmp_path: Path, content: str, expected: str) -> None:
    csv = tmp_path / "bad.csv"
    csv.write_text(content)
    events, exposures, queries = outputs(tmp_path)
    with pytest.raises(ShopguideError, match=expected) as err:
        ingest(csv, events, exposures, queries, params("rees46", protocol=REES46_PROTOCOL))
    assert str(csv) in str(err.value)
    assert not events.parent.exists() or not any(events.parent.iterdir())


@pytest.mark.parametrize(
    ("adapter", "ids", "labels"),
    [
        ("aliccp", ("101", "205", "206"), ("click", "purchase")),
        ("aliexpress", ("search_id", None, None), ("click", "conversion")),
    ],
)
def test_impression_fixtures(
    tmp_path: Path, adapter: str, ids: tuple, labels: tuple[str, str]
) -> None:
    train = FIXTURES / f"{adapter}_train_sample.csv"
    if not train.is_file():
        pytest.skip(f"fixture {train} not found (set SHOPGUIDE_FIXTURES)")
    raw = {s: pd.read_csv(FIXTURES / f"{adapter}_{s}_sample.csv") for s in ("train", "test")}
    events, exposures, queries = outputs(tmp_path)
    p = params(adapter, **IMPRESSION_PARAMS)
    card = ingest(train, events, exposures, queries, p)

    x = pd.read_parquet(exposures)
    for split, frame in raw.items():
        got = x[x["split"] == split]
        assert len(got) == len(frame)
        assert card["exposures"][split]["exposures"] == len(frame)
        assert got["click"].sum() == frame[labels[0]].sum()
        assert got["buy"].sum() == frame[labels[1]].sum()
        assert sorted(got["user_id"]) == sorted(frame[ids[0]])
    if ids[1] is not None:
        assert sorted(x.loc[x["split"] == "train", "item_id"]) == sorted(raw["train"][ids[1]])
        assert sorted(x.loc[x["split"] == "train", "category_id"]) == sorted(raw["train"][ids[2]])
    # Time order: every train exposure precedes every test exposure, inside the window.
    assert x.loc[x["split"] == "train", "t0"].max() < p.protocol.test_start
    assert x.loc[x["split"] == "test", "t0"].min() >= p.protocol.test_start
    assert x["t0"].max() < p.protocol.window_end
    assert [c for c in x.columns if c.startswith("x_")]  # the dataset's own features kept

    ev = pd.read_parquet(events)
    total = sum(len(f) for f in raw.values())
    positives = sum(int(f[labels[0]].sum() + f[labels[1]].sum()) for f in raw.values())
    assert len(ev) == total + positives
    assert set(ev["behavior"]) <= {"pv", "click", "buy"}
    report = validate_events(events, p, tmp_path / "report")
    assert report.success, [r for r in report.results if not r["success"]]


def test_impression_missing_label_column(tmp_path: Path) -> None:
    train = FIXTURES / "aliccp_train_sample.csv"
    if not train.is_file():
        pytest.skip(f"fixture {train} not found")
    for split in ("train", "test"):
        frame = pd.read_csv(FIXTURES / f"aliccp_{split}_sample.csv").drop(columns="purchase")
        frame.to_csv(tmp_path / f"aliccp_{split}.csv", index=False)
    events, exposures, queries = outputs(tmp_path)
    with pytest.raises(ShopguideError, match=r"missing label columns \['purchase'\]"):
        ingest(
            tmp_path / "aliccp_train.csv",
            events,
            exposures,
            queries,
            params("aliccp", **IMPRESSION_PARAMS),
        )
    assert not events.exists() and not exposures.exists()
