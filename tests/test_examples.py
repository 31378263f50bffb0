"""Labels with a horizon and their censoring, the items sampled at each exposure's moment, the
ranking queries of protocol taobao-rank-v1 and their metrics: on hand-made events where the
answer is known, and on the real sample against the protocol's published counts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from shopguide.adapters import ingest
from shopguide.config import Params
from shopguide.exposures import build_exposures
from shopguide.ranking.metrics import query_scores, summary
from shopguide.ranking.queries import build_queries

START, TEST, END = 1511539200, 1512144000, 1512316800
NO_SAMPLES = {"recent": 0, "popularity": 0, "uniform": 0}


TASKS = ("click", "cart", "fav", "buy")


def params(horizon: int | None = 3600, **sampling: int) -> Params:
    return Params.model_validate(
        {
            "protocol": {"label_horizon_s": horizon, "tasks": TASKS},
            "sampling": {**NO_SAMPLES, **sampling},
            "validation": {"positive_rate": {t: {"min": 0, "max": 1} for t in TASKS}},
            "gate": {"auc_floor": dict.fromkeys(TASKS, 0.5)},
        }
    )


def write_events(path: Path, rows: list[tuple]) -> Path:
    """Canonical events from (user, item, category, behaviour, ts) rows."""
    pd.DataFrame(rows, columns=["user_id", "item_id", "category_id", "behavior", "ts"]).to_parquet(
        path
    )
    return path


def examples(tmp_path: Path, rows: list[tuple], p: Params) -> pd.DataFrame:
    events = write_events(tmp_path / "events.parquet", rows)
    build_exposures(events, tmp_path / "x.parquet", p)
    return pd.read_parquet(tmp_path / "x.parquet")


def test_a_label_counts_only_inside_its_horizon(tmp_path: Path) -> None:
    t = START + 1000
    rows = [
        (1, 10, 5, "pv", t),
        (1, 10, 5, "cart", t + 3599),  # inside an hour
        (1, 10, 5, "buy", t + 3600),  # the horizon's end is not inside it
        (2, 11, 5, "pv", t),
        (2, 11, 5, "fav", t),  # the moment itself counts
        (3, 12, 5, "pv", TEST + 100),  # a late event: data runs to TEST + 100 + 1
        (4, 13, 5, "pv", TEST - 10),
    ]
    x = examples(tmp_path, rows, params(3600)).set_index("user_id")
    assert (x.loc[1, "cart"], x.loc[1, "buy"], x.loc[2, "fav"]) == (1, 0, 1)
    assert (x["click"] == 1).all()  # an exposure is a view at its moment
    # user 4's hour passes into the test period, user 3's past the data's end: censored
    assert set(x.index) == {1, 2}
    opened = examples(tmp_path, rows, params(None)).set_index("user_id")
    assert set(opened.index) == {1, 2, 3, 4} and opened.loc[1, "buy"] == 1  # taobao-mtl-v1


def test_sampled_items_come_from_before_the_moment(tmp_path: Path) -> None:
    """Recent samples are the user's own views in the lookback before t0, never the
    exposure's item or a later view; popularity and uniform draws are items seen before t0.
    Every sampled row is labelled by what the user did with it in the horizon."""
    t = START + 10 * 86400 // 10
    rows = [
        (1, 100, 1, "pv", t - 90_000),  # viewed, but before the 24 h lookback
        (1, 101, 1, "pv", t - 500),
        (1, 102, 1, "pv", t - 400),
        (1, 103, 1, "pv", t),  # the exposure at t
        (1, 101, 1, "cart", t + 60),  # a recent item carted after t: a positive sample
        (1, 104, 1, "pv", t + 10),  # viewed after t: never a sample at t
        (2, 200, 2, "pv", t - 300),  # someone else's view: popular before t
        (2, 201, 2, "pv", t + 5000),  # seen only after t
    ]
    p = params(3600, recent=5, popularity=20, uniform=20)
    x = examples(tmp_path, rows, p)
    at_t = x[(x["user_id"] == 1) & (x["t0"] == t)]
    sampled = at_t[at_t["sampled"]]
    assert set(sampled["item_id"]) <= {100, 101, 102, 200}  # seen before t
    assert {101, 102} <= set(sampled["item_id"])  # all recent views (5 asked, 2 there)
    assert not sampled.duplicated("item_id").any()
    assert at_t.loc[~at_t["sampled"], "item_id"].tolist() == [103]
    labels = sampled.set_index("item_id")
    assert (labels.loc[101, "cart"], labels.loc[102, "cart"]) == (1, 0)
    assert labels["click"].sum() == 0  # none of them viewed again within the hour
    again = examples(tmp_path, rows, p)
    pd.testing.assert_frame_equal(x, again)  # same seed, same rows


def test_queries_follow_the_protocol_on_hand_made_events(tmp_path: Path) -> None:
    """A cart at t ranks the items viewed in the 24 h before; an item carted before t is no
    candidate (its own first cart, at t - 50, is a query of its own); a query needs two
    candidates; a second cart of an item is no query."""
    t = TEST + 10_000
    rows = [
        (1, 10, 1, "pv", t - 100),
        (1, 11, 1, "pv", t - 200),
        (1, 12, 1, "pv", t - 300),
        (1, 12, 1, "cart", t - 50),  # carted before t: not a candidate
        (1, 13, 1, "pv", t - 90_000),  # outside the lookback
        (1, 10, 1, "cart", t),
        (1, 10, 1, "cart", t + 500),  # not the first cart of the item
        (2, 20, 1, "pv", t - 10),
        (2, 20, 1, "cart", t),  # one candidate only: no query
    ]
    events = write_events(tmp_path / "events.parquet", rows)
    stats = build_queries(events, tmp_path / "q.parquet", params())
    q = pd.read_parquet(tmp_path / "q.parquet")
    assert stats["test"]["cart"]["queries"] == 2
    earlier = q[q["t0"] == t - 50]
    assert sorted(earlier["item_id"]) == [10, 11, 12]  # 13 is outside the lookback
    q = q[q["t0"] != t - 50]
    assert sorted(q["item_id"]) == [10, 11]
    assert q.set_index("item_id").loc[10, "positive"] == 1
    assert (q["t0"] == t).all() and (q["split"] == "test").all()


def test_sample_queries_equal_the_protocols_counts(sample: Path, tmp_path: Path) -> None:
    """taobao-rank-v1 on the sample: cart 139, fav 52, buy 188 test queries from 226 users,
    median 15 candidates (mean 21.0)."""
    out = tmp_path / "out"
    card = ingest(
        sample,
        out / "events.parquet",
        out / "exposures.parquet",
        out / "queries.parquet",
        Params(),
    )
    test = card["ranking_queries"]["test"]
    assert {t: test[t]["queries"] for t in ("cart", "fav", "buy")} == {
        "cart": 139,
        "fav": 52,
        "buy": 188,
    }
    q = pd.read_parquet(out / "queries.parquet").query("split == 'test'")
    sizes = q.groupby("query_id").size()
    assert q["user_id"].nunique() == 226
    assert sizes.median() == 15 and round(sizes.mean(), 1) == 21.0
    assert (q.groupby("query_id")["positive"].sum() == 1).all()


def test_ranking_metrics_by_hand() -> None:
    """Query 0: the positive second of three (one tie); query 1: first of two."""
    query = np.array([0, 0, 0, 1, 1])
    users = np.array([7, 7, 7, 8, 8])
    positive = np.array([0, 1, 0, 1, 0])
    scores = np.array([0.9, 0.5, 0.5, 0.3, 0.1])
    result = query_scores(query, users, positive, scores)
    rank0 = 1 + 1 + 0.5  # one above, one tied
    np.testing.assert_allclose(result.values["mrr"], [1 / rank0, 1.0])
    np.testing.assert_allclose(result.values["hr3"], [1.0, 1.0])
    np.testing.assert_allclose(result.values["auc"], [0.25, 1.0])
    assert list(result.users) == [7, 8]
    constant = query_scores(query, users, positive, np.zeros(5))
    np.testing.assert_allclose(constant.values["auc"], [0.5, 0.5])
    report = summary(result, 200, 0.95, 1)
    assert report["queries"] == 2 and report["users"] == 2
    assert report["mrr"] == pytest.approx((1 / rank0 + 1) / 2)
    assert report["mrr_ci"]["low"] <= report["mrr"] <= report["mrr_ci"]["high"]
    with pytest.raises(ValueError, match="exactly one positive"):
        query_scores(query, users, np.array([1, 1, 0, 1, 0]), scores)
