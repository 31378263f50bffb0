"""Declared datasets: the schema's load-time checks, the tables' parse errors, the example
table on the real Olist sample (the protocol's counts), and history that only counts what was
known before each example's t0."""

from __future__ import annotations

import contextlib
import copy
import io
import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from shopguide.dataset.checks import validate_dataset
from shopguide.dataset.encode import bag_tokens, hash_values, text_tokens
from shopguide.dataset.examples import build_examples, joined_rows
from shopguide.dataset.schema import TextSpec, load_schema
from shopguide.errors import ShopguideError

ROOT = Path(__file__).resolve().parents[1]
OLIST_SCHEMA = ROOT / "datasets/olist.yaml"


def write_schema(tmp_path: Path, raw: dict, name: str = "schema.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def olist_raw(root: Path) -> dict:
    raw = yaml.safe_load(OLIST_SCHEMA.read_text())
    raw["root"] = str(root)
    return raw


def test_olist_examples_match_the_protocol(olist: Path, tmp_path: Path) -> None:
    schema = load_schema(write_schema(tmp_path, olist_raw(olist)))
    examples = build_examples(schema)
    train, test = examples[examples.split == "train"], examples[examples.split == "test"]
    # olist-mtl-v1: 11,060 train and 5,486 test order items; 700 bad reviews, 299 late
    assert (len(train), len(test)) == (11_060, 5_486)
    assert int(test.bad_review.sum()) == 700 and int(test.late.sum()) == 299
    assert set(examples.review_score.unique()) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    assert examples.delivery_days_log1p.between(0, 6).all()
    kinds = {k: schema.features_of(k) for k in ("numeric", "categorical")}
    assert "seller_id_bad_review_mean" in kinds["numeric"] and "seller" in kinds["categorical"]


def test_olist_review_variant_inherits_the_tables(olist: Path, tmp_path: Path) -> None:
    write_schema(tmp_path, olist_raw(olist), "olist.yaml")
    child = yaml.safe_load((ROOT / "datasets/olist_review.yaml").read_text())
    schema = load_schema(write_schema(tmp_path, child, "review.yaml"))
    examples = build_examples(schema)
    counts = examples.split.value_counts()
    assert (counts["train"], counts["test"]) == (4_007, 2_169)  # olist-review-v1
    assert schema.features_of("text") == ["title", "message"]


def test_history_counts_a_review_only_once_it_was_answered(olist: Path, tmp_path: Path) -> None:
    """Brute force on a sample of examples: the seller's count of earlier order items, and
    their mean bad review over those whose review was answered strictly before t0."""
    schema = load_schema(write_schema(tmp_path, olist_raw(olist)))
    examples = build_examples(schema)
    rows = joined_rows(schema)  # the examples' own rows, in the same order
    seller = rows["order_items.seller_id"].to_numpy()
    answered = rows["reviews.review_answer_timestamp"].to_numpy()
    bad = (rows["reviews.review_score"] <= 2).to_numpy(float)
    t0 = examples.t0.to_numpy()
    pending = 0  # examples with an earlier order item whose review was not answered yet
    for row in np.random.default_rng(0).choice(len(examples), 300, replace=False):
        same = seller == seller[row]
        assert examples.seller_id_count.iloc[row] == (same & (t0 < t0[row])).sum()
        known = same & (answered < t0[row])
        expected = bad[known].mean() if known.any() else np.nan
        np.testing.assert_allclose(examples.seller_id_bad_review_mean.iloc[row], expected)
        pending += known.sum() < (same & (t0 < t0[row])).sum()
    assert pending > 10  # the case the rule is for occurs in the sample


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda r: r["features"].update(price="order_items.cost"),
            "order_items has no column 'cost'",
        ),
        (lambda r: r["features"].update(score="reviews.review_score"), "could leak the future"),
        (
            lambda r: r["features"].update(due="orders.order_delivered_customer_date"),
            "known only at orders.order_delivered_customer_date",
        ),
        (lambda r: r["tasks"]["late"].update(column="refunds.value"), "table 'refunds'"),
        (lambda r: r.update(time="order_items.price"), "is not a timestamp column"),
        (
            lambda r: r["tables"]["orders"]["columns"].update(order_status="enum"),
            "order_status",
        ),
        (
            lambda r: r["history"].append(
                {"by": "order_items.seller_id", "of": "nope", "fn": "mean"}
            ),
            "no task or feature 'nope'",
        ),
        (lambda r: r.update(tasks={}), "at least one task"),
        (
            lambda r: r["features"].update(price={"column": "order_items.price", "op": "gt"}),
            "needs exactly one of value and other",
        ),
        (lambda r: r["serving"].update(lookup=["reviews"]), "reviews's rows arrive later"),
        (lambda r: r["serving"].update(lookup=["payments"]), "joined by its key, one row each"),
        (lambda r: r["serving"].update(lookup=["refunds"]), "'refunds' is not a joined table"),
    ],
)
def test_a_schema_error_is_one_clear_message_at_load(tmp_path: Path, change, message: str) -> None:
    raw = olist_raw(tmp_path)
    change(raw)
    with pytest.raises(ShopguideError, match="invalid dataset schema") as err:
        load_schema(write_schema(tmp_path, raw))
    assert message in str(err.value)


def test_a_feature_that_is_a_label_is_refused(tmp_path: Path) -> None:
    raw = olist_raw(tmp_path)
    raw["tasks"]["expensive"] = {
        "type": "binary",
        "column": "order_items.price",
        "op": "gt",
        "value": 100,
    }
    with pytest.raises(ShopguideError, match="the label of task expensive"):
        load_schema(write_schema(tmp_path, raw))


def tiny_schema(tmp_path: Path) -> dict:
    return {
        "name": "tiny",
        "root": str(tmp_path),
        "tables": {
            "orders": {
                "path": "orders.csv",
                "key": ["order_id"],
                "columns": {
                    "order_id": "id",
                    "user": "id",
                    "shop": "categorical",
                    "ts": "timestamp",
                    "amount": {"type": "numeric", "min": 0},
                    "tags": "multi_categorical",
                },
            },
            "ratings": {
                "path": "ratings.csv",
                "key": ["order_id"],
                "known_at": "rated_at",
                "columns": {"order_id": "id", "stars": "numeric", "rated_at": "timestamp"},
            },
        },
        "unit": "orders",
        "time": "orders.ts",
        "joins": [{"table": "ratings", "left": ["orders.order_id"], "required": False}],
        "ids": {"user": "orders.user", "item": "orders.shop", "category": "orders.shop"},
        "features": {"amount": "orders.amount", "shop": "orders.shop", "tags": "orders.tags"},
        "history": [{"by": "orders.shop", "of": "stars", "fn": "mean"}, {"by": "orders.shop"}],
        "tasks": {"stars": {"type": "regression", "column": "ratings.stars"}},
        "split": {"test_start": "2024-01-03"},
    }


def write_tiny(tmp_path: Path, orders: str, ratings: str) -> Path:
    (tmp_path / "orders.csv").write_text(orders)
    (tmp_path / "ratings.csv").write_text(ratings)
    return write_schema(tmp_path, tiny_schema(tmp_path))


ORDERS = """order_id,user,shop,ts,amount,tags
o1,u1,s1,2024-01-01 10:00:00,5,a|b
o2,u2,s1,2024-01-02 10:00:00,7,
o3,u1,s1,2024-01-04 10:00:00,9,c
"""


def test_history_waits_for_the_later_arriving_row(tmp_path: Path) -> None:
    # o1 is rated before o3 but after o2; o2 is rated after o3: only o1 counts for o3
    ratings = "order_id,stars,rated_at\no1,4,2024-01-03 09:00:00\no2,1,2024-01-05 00:00:00\n"
    examples = build_examples(load_schema(write_tiny(tmp_path, ORDERS, ratings)))
    by_order = examples.set_index(examples.amount)
    assert np.isnan(by_order.loc[5.0, "shop_stars_mean"])  # nothing before o1
    assert np.isnan(by_order.loc[7.0, "shop_stars_mean"])  # o1 rated after o2's t0
    assert by_order.loc[9.0, "shop_stars_mean"] == 4.0  # o1 only; o2 not yet rated
    assert by_order.loc[9.0, "shop_count"] == 2.0  # the orders themselves: known at their t0
    assert list(examples.split) == ["train", "train", "test"]


def test_declared_values_parts_comparisons_kinds_and_fills(tmp_path: Path) -> None:
    raw = tiny_schema(tmp_path)
    raw["features"] |= {
        "hour": {"column": "orders.ts", "part": "hour"},
        "first_shop": {"column": "orders.shop", "op": "eq", "value": "s1"},
        "user_code": {"column": "orders.user", "kind": "categorical"},
    }
    raw["tasks"]["rated"] = {
        "type": "binary",
        "column": "ratings.stars",
        "op": "ge",
        "value": 1,
        "fill": 0,
    }
    ratings = "order_id,stars,rated_at\no1,4,2024-01-03 09:00:00\n"
    write_tiny(tmp_path, ORDERS, ratings)
    schema = load_schema(write_schema(tmp_path, raw))
    examples = build_examples(schema)
    assert list(examples.hour) == [10.0, 10.0, 10.0]
    assert list(examples.first_shop) == [1.0, 1.0, 1.0]
    assert list(examples.rated) == [1.0, 0.0, 0.0]  # no rating row: filled, not unknown
    assert examples.stars.isna().sum() == 2  # no fill: unknown, not trained on
    assert "user_code" in schema.features_of("categorical")
    assert "hour" in schema.features_of("numeric")
    raw["features"]["shop_number"] = {"column": "orders.shop", "kind": "numeric"}
    with pytest.raises(ShopguideError, match=r"orders.shop read as a number.*'s1'"):
        build_examples(load_schema(write_schema(tmp_path, raw)))


@pytest.mark.parametrize(
    ("orders", "message"),
    [
        (ORDERS.replace(",5,", ",five,"), "line 2, column amount: 'five' is not a number"),
        (ORDERS.replace("2024-01-02 10:00:00", "yesterday"), "line 3, column ts: 'yesterday'"),
        (ORDERS.replace("amount", "total"), "no columns ['amount']"),
    ],
)
def test_bad_table_values_are_named_by_file_line_and_column(
    tmp_path: Path, orders: str, message: str
) -> None:
    schema = load_schema(write_tiny(tmp_path, orders, "order_id,stars,rated_at\n"))
    with pytest.raises(ShopguideError) as err:
        build_examples(schema)
    assert "orders.csv" in str(err.value) and message in str(err.value)


@pytest.mark.parametrize(
    ("orders", "expectation", "line"),
    [
        (ORDERS.replace(",7,", ",-7,"), "expect_column_values_to_be_between", 3),
        (ORDERS.replace("o3,", "o1,"), "expect_column_values_to_be_unique", 2),
    ],
)
def test_the_table_suites_judge_ranges_and_keys(
    tmp_path: Path, orders: str, expectation: str, line: int
) -> None:
    schema = load_schema(write_tiny(tmp_path, orders, "order_id,stars,rated_at\n"))
    report, examples = validate_dataset(schema, tmp_path / "schema.yaml", tmp_path / "reports")
    assert not report.success and examples is None  # nothing is built on a failed table
    failed = [r for r in report.results if not r["success"]]
    assert [r["expectation"] for r in failed] == [expectation]
    assert line in [row["__line"] for row in failed[0]["unexpected_examples"]]
    assert report.docs_path.is_file()


def test_text_and_bag_tokens_are_stable_and_padded() -> None:
    spec = TextSpec(max_tokens=6)
    texts = pd.Series(["Ótimo", None, "ótimo"])
    tokens = text_tokens(texts, spec)
    assert tokens.shape == (3, 6) and (tokens[1] == 0).all()
    assert (tokens[0] == tokens[2]).all() and (tokens[0] > 0).sum() == 6  # lower-cased, cut
    bags = bag_tokens(pd.Series(["a|b", "", "b"]), "|", spec)
    assert (bags[0] > 0).sum() == 2 and (bags[1] == 0).all() and bags[2, 0] == bags[0, 1]
    assert (hash_values(pd.Series(["x", "x"])) >= 0).all()
    assert hash_values(pd.Series(["x"]))[0] == hash_values(pd.Series(["x", "y"]))[0]


def test_history_over_an_event_table_by_pair_window_and_age(tmp_path: Path) -> None:
    """Counts of a user's views of an item (a pair) over a trailing window, and seconds since
    the user last viewed it, from an event table beside the examples: only events strictly
    before each example's t0, and in the window."""
    raw = tiny_schema(tmp_path)
    raw["tables"]["views"] = {
        "path": "views.csv",
        "columns": {"user": "id", "shop": "categorical", "at": "timestamp", "kind": "categorical"},
    }
    view = {"table": "views", "by": ["orders.user", "orders.shop"], "at": "at"}
    raw["history"] = [
        {**view, "where": [{"column": "views.kind", "in": ["pv"]}], "name": "pair_views"},
        {**view, "window_s": 86_400, "name": "pair_views_24h"},
        {**view, "fn": "age", "name": "pair_view_age"},
        {"table": "views", "by": "orders.user", "at": "at", "name": "user_views"},
    ]
    day = 86_400
    o1 = pd.Timestamp("2024-01-01 10:00:00").timestamp()
    (tmp_path / "views.csv").write_text(
        "user,shop,at,kind\n"
        f"u1,s1,{int(o1 - 2 * day)},pv\n"  # two days before o1: outside the 24 h window
        f"u1,s1,{int(o1 - 60)},pv\n"  # a minute before o1
        f"u1,s1,{int(o1)},cart\n"  # at o1's t0 itself: not before it
        f"u2,s1,{int(o1)},pv\n"  # another user
    )
    write_tiny(tmp_path, ORDERS, "order_id,stars,rated_at\n")
    examples = build_examples(load_schema(write_schema(tmp_path, raw)))
    first = examples.iloc[0]  # o1: u1 at s1
    assert first.pair_views == 2.0 and first.pair_views_24h == 1.0 and first.pair_view_age == 60
    assert first.user_views == 2.0
    third = examples.iloc[2]  # o3: u1 at s1, three days after o1
    assert third.pair_views == 2.0  # the cart is no view
    assert third.pair_views_24h == 0.0 and third.pair_view_age == 3 * day
    assert third.user_views == 3.0  # every event of u1 before o3, the cart too
    second = examples.iloc[1]  # o2: u2 at s1, one day after o1
    assert second.pair_views == 1.0 and second.pair_view_age == day


def test_a_history_on_a_table_without_a_time_is_refused(tmp_path: Path) -> None:
    raw = tiny_schema(tmp_path)
    raw["history"] = [{"table": "orders", "by": "orders.shop", "name": "shop_orders"}]
    with pytest.raises(ShopguideError, match="declares no known_at; name its time column"):
        load_schema(write_schema(tmp_path, raw))


def to_sqlite(db: Path, tables: dict[str, pd.DataFrame]) -> None:
    with contextlib.closing(sqlite3.connect(db)) as con:
        for name, frame in tables.items():
            frame.to_sql(name, con, index=False)


def test_tables_read_from_sqlite_give_the_csv_examples(olist: Path, tmp_path: Path) -> None:
    """Olist with every table in one SQLite database (typed columns where the CSV's values
    are numbers) builds exactly the examples of the CSV files."""
    raw = olist_raw(olist)
    db = tmp_path / "olist.sqlite"
    to_sqlite(db, {name: pd.read_csv(olist / t["path"]) for name, t in raw["tables"].items()})
    from_db = copy.deepcopy(raw)
    for name, table in from_db["tables"].items():
        table |= {"path": str(db), "sqlite_table": name}
    expected = build_examples(load_schema(write_schema(tmp_path, raw, "csv.yaml")))
    got = build_examples(load_schema(write_schema(tmp_path, from_db, "db.yaml")))
    pd.testing.assert_frame_equal(got, expected)


@pytest.mark.parametrize(
    ("table", "orders", "message"),
    [
        ("orders", ORDERS.replace(",5,", ",five,"), "table 'orders', row 1, column amount: 'five'"),
        ("orders", ORDERS.replace("amount", "total"), "table 'orders': no columns ['amount']"),
        ("order", ORDERS, "no table or view 'order' (the database has ['orders', 'ratings'])"),
    ],
)
def test_sqlite_errors_name_the_database_table_row_and_column(
    tmp_path: Path, table: str, orders: str, message: str
) -> None:
    frames = {
        "orders": pd.read_csv(io.StringIO(orders), dtype=str),
        "ratings": pd.DataFrame({"order_id": ["o1"], "stars": [4], "rated_at": [1704200000]}),
    }
    to_sqlite(tmp_path / "shop.db", frames)
    raw = tiny_schema(tmp_path)
    raw["tables"]["orders"] |= {"path": "shop.db", "sqlite_table": table}
    raw["tables"]["ratings"] |= {"path": "shop.db", "sqlite_table": "ratings"}
    with pytest.raises(ShopguideError) as err:
        build_examples(load_schema(write_schema(tmp_path, raw)))
    assert str(tmp_path / "shop.db") in str(err.value) and message in str(err.value)
