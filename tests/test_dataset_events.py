"""Declared datasets over an event log: a headerless file with a cut-off last line, a unit of
one behaviour in a time window (a user's first view of each item), and labels from what
follows t0 (`next`) within a horizon, censored where the data cannot tell yet. On the real
Taobao sample the schema rebuilds protocol taobao-mtl-v1's exposures and positives exactly,
and so does the REES46 schema on the same events in REES46's layout."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import yaml
from sklearn.metrics import roc_auc_score

from shopguide.config import Params
from shopguide.dataset.examples import build_examples
from shopguide.dataset.learn import predictions, train_declared
from shopguide.dataset.schema import load_schema
from shopguide.dataset.steps import check_step
from shopguide.errors import ShopguideError
from tests.test_rees46_pipeline import SHIFT, write_rees46_csv

ROOT = Path(__file__).resolve().parents[1]
T = 1_000_000  # an exposure's moment
S = T + 86_400  # the test period's start
W0, W1 = T - 1_000, T + 2 * 86_400  # the window the events are cut to
EVENTS = f"""u4,i4,c1,pv,{W0 - 10}
u1,i1,c1,pv,{T}
u1,i1,c1,pv,{T + 100}
u1,i1,c1,cart,{T}
u1,i1,c1,buy,{T + 10_800}
u1,i2,c1,pv,{T}
u1,i2,c1,cart,{T + 10_801}
u2,i1,c1,pv,{T + 10}
u2,i1,c1,fav,{T + 15}
u3,i1,c1,pv,{S - 3_600}
u3,i1,c1,cart,{S - 1_800}
u2,i3,c2,pv,{S + 100}
u2,i3,c2,buy,{S + 200}
u5,i5,c2,pv,{W1 - 100}
u5,i5,c2,pv,{W1 + 5}
u9,i9,c9,pv"""  # the last line is cut off


def event_schema(tmp_path: Path, malformed: float = 0.1) -> Path:
    window = {"column": "events.ts", "at_least": W0, "below": W1}

    def after(behaviour: str, kind: str = "binary") -> dict:
        where = [{"column": "events.kind", "in": [behaviour]}, window]
        by = ["events.user", "events.item"]
        return {
            "type": kind,
            "next": {"table": "events", "by": by, "where": where, "within_s": 10_800},
        }

    raw = {
        "name": "log",
        "root": str(tmp_path),
        "tables": {
            "events": {
                "path": "events.csv",
                "header": False,
                "max_malformed_fraction": malformed,
                "known_at": "ts",
                "columns": {
                    "user": {"type": "id", "nullable": False},
                    "item": {"type": "id", "nullable": False},
                    "category": {"type": "id", "nullable": False},
                    "kind": {"type": "categorical", "nullable": False},
                    "ts": {"type": "timestamp", "nullable": False},
                },
            }
        },
        "unit": "events",
        "time": "events.ts",
        "filters": [{"column": "events.kind", "in": ["pv"]}, window],
        "first_per": ["events.user", "events.item"],
        "ids": {"user": "events.user", "item": "events.item", "category": "events.category"},
        "history": [
            {"by": "events.user", "table": "events", "where": [window], "name": "user_events"}
        ],
        "tasks": {
            "cart": after("cart"),
            "fav": after("fav"),
            "buy": after("buy"),
            "views": after("pv", "regression"),
        },
        "split": {"test_start": str(S)},
    }
    (tmp_path / "events.csv").write_text(EVENTS)
    path = tmp_path / "log.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def test_next_labels_count_what_follows_t0_within_the_horizon(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        examples = build_examples(load_schema(event_schema(tmp_path)))
    assert "dropped 1 malformed rows (lines 16" in caplog.text
    # One example per first view in the window, in file order; u4's view is before it.
    got = examples.set_index(examples["t0"] - T)
    assert list(got.index) == [0, 0, 10, S - 3_600 - T, S + 100 - T, W1 - 100 - T]
    assert list(examples["split"]) == ["train"] * 4 + ["test"] * 2
    e1, e2, e3, e5, e6, e4 = (examples.iloc[i] for i in range(6))
    assert e1.cart == 0  # a cart at t0 itself does not follow it
    assert e1.buy == 1  # exactly at the horizon: within it
    assert e1.views == 1  # the second view, 100 s later (a regression counts)
    assert e2.cart == 0  # one second past the horizon
    assert e3.fav == 1 and e3.cart == 0 and e3.buy == 0
    # A training exposure whose horizon reaches into the test period: unknown, not 1.
    assert np.isnan([e5.cart, e5.fav, e5.buy, e5.views]).all()
    assert e6.buy == 1 and e6.cart == 0
    # The window ends 100 s after e4: its horizon passes the data's end.
    assert np.isnan([e4.cart, e4.fav, e4.buy]).all()
    # History counts every event of the user in the window strictly before t0.
    assert e1.user_events == 0 and e6.user_events == 2  # u2's view and fav


def test_malformed_rows_beyond_the_tables_allowance_are_named(tmp_path: Path) -> None:
    """Without the allowance the cut-off line stays, and the table's suite names it."""
    with pytest.raises(ShopguideError, match="expect_column_values_to_not_be_null") as err:
        check_step(event_schema(tmp_path, malformed=0.0), Params(), tmp_path / "reports")
    assert "'__line': 16" in str(err.value)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t: t.update(column="events.kind"), "exactly one of column and next"),
        (lambda t: t.update(type="multiclass"), "binary or regression label alone"),
        (lambda t: t["next"].update(table="orders"), "no table 'orders'"),
        (lambda t: t["next"].update(by=["events.shop"]), "events has no column 'shop'"),
    ],
)
def test_a_next_task_is_checked_at_load(tmp_path: Path, change, message: str) -> None:
    path = event_schema(tmp_path)
    raw = yaml.safe_load(path.read_text())
    change(raw["tasks"]["cart"])
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ShopguideError, match="invalid dataset schema") as err:
        load_schema(path)
    assert message in str(err.value)


def test_history_of_a_label_from_later_rows_is_refused(tmp_path: Path) -> None:
    path = event_schema(tmp_path)
    raw = yaml.safe_load(path.read_text())
    raw["history"].append({"by": "events.user", "of": "cart", "fn": "mean"})
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ShopguideError, match="task 'cart' is read from later rows"):
        load_schema(path)


def test_the_taobao_schema_rebuilds_the_protocols_exposures(sample: Path, tmp_path: Path) -> None:
    """taobao-mtl-v1 (../shared/benchmarks/README.md): 44,312 train and 15,562 test
    exposures; on the open horizon the test positives are cart 132, fav 46, buy 162. With the
    3-hour horizon, 13,744 test exposures are judged (the rest censored), as in `dvc repro`."""
    raw = yaml.safe_load((ROOT / "datasets/taobao.yaml").read_text())
    raw["root"] = str(sample.parent)
    raw["tables"]["events"]["path"] = sample.name
    examples = build_examples(load_schema(_write(tmp_path / "3h.yaml", raw)))
    test = examples[examples["split"] == "test"]
    assert (examples["split"] == "train").sum() == 44_312 and len(test) == 15_562
    assert test["buy"].notna().sum() == 13_744
    assert {t: int(test[t].sum()) for t in ("cart", "fav", "buy")} == {
        "cart": 85,
        "fav": 28,
        "buy": 129,
    }
    for task in raw["tasks"].values():
        task["next"].pop("within_s")
    examples = build_examples(load_schema(_write(tmp_path / "open.yaml", raw)))
    test = examples[examples["split"] == "test"]
    assert {t: int(test[t].sum()) for t in ("cart", "fav", "buy")} == {
        "cart": 132,
        "fav": 46,
        "buy": 162,
    }
    # Features exact as of t0: the pair's carts before the first view, the user's views.
    first = examples.iloc[0]
    assert first["user_pv_all"] >= 0 and not np.isnan(first["user_item_cart_count"])


def _write(path: Path, raw: dict) -> Path:
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def test_the_rees46_schema_reads_the_items_own_fields(sample: Path, tmp_path: Path) -> None:
    """REES46's layout (the Taobao sample's events written as REES46 writes them): the same
    exposures and labels as Taobao's, and brand, price and the category_code levels reach the
    model as a category, a number and a bag."""
    write_rees46_csv(sample, tmp_path / "events.csv")
    raw = yaml.safe_load((ROOT / "datasets/rees46.yaml").read_text())
    raw["root"], raw["tables"]["events"]["path"] = str(tmp_path), "events.csv"
    raw["split"]["test_start"] = str(1512144000 + SHIFT)  # the sample's test period
    schema = load_schema(_write(tmp_path / "rees46.yaml", raw))
    examples = build_examples(schema)
    test = examples[examples["split"] == "test"]
    assert (examples["split"] == "train").sum() == 44_312 and len(test) == 15_562
    assert test["buy"].notna().sum() == 13_744
    assert int(test["cart"].sum()) == 85 and int(test["buy"].sum()) == 129
    params = Params.model_validate({"train": {"max_epochs": 1}})
    model, _ = train_declared(examples, schema, params)
    config = model.config
    assert "brand" in config.categorical_features and "price" in config.dense_features
    assert "category_levels" in config.bag_features
    known = test[test["buy"].notna()]
    assert roc_auc_score(known["buy"], predictions(model, known, schema)["buy"]) > 0.6
