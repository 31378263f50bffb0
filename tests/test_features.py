"""Feast features: registry contents, point-in-time correctness (no leakage), online store."""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest

from shopguide.config import DataParams, load_params
from shopguide.duck import connect
from shopguide.errors import ShopguideError
from shopguide.feature_spec import (
    BEHAVIOUR_CODES,
    FEATURE_SERVICE,
    model_feature_columns,
    source_column,
    stat_features,
)
from shopguide.features import build_features, open_store, training_set
from shopguide.training_join import asof_training_set
from tests.conftest import PipelineRun, copy_feature_repo, write_params


def feature_columns(frame: pd.DataFrame) -> list[str]:
    """Every joined feature column (Feast full names, `<view>__<feature>`; not a pandas index
    column such as `__index_level_0__`)."""
    return [c for c in frame.columns if "__" in c and not c.startswith("__")]


def test_training_set_has_every_example_and_feature(pipeline_run: PipelineRun) -> None:
    ts = pd.read_parquet(pipeline_run.training_set)
    exposures = pd.read_parquet(pipeline_run.exposures)
    assert len(ts) == len(exposures) > 59_874 // 2  # exposures (some censored) and samples
    assert set(map(source_column, model_feature_columns())) <= set(ts.columns)
    feats = ts[feature_columns(ts)]
    assert not feats.isna().any().any()
    assert (feats.to_numpy() >= 0).all()
    assert feats["user_stats__pv_all"].gt(0).mean() > 0.5  # most users have history
    # Sampled items of the user's recent views have a history with the user; exposures, at
    # their first view, mostly none.
    sampled = ts["sampled"].to_numpy()
    viewed = ts["user_item_stats__pv_count"].gt(0).to_numpy()
    assert viewed[sampled].mean() > 0.3 and viewed[~sampled].mean() < 0.05
    assert ts["user_sequence__behavior_0"].gt(0).mean() > 0.9  # a last event before t0


def test_feast_registry_holds_the_definitions(pipeline_run: PipelineRun) -> None:
    store = open_store(pipeline_run.feature_repo)
    assert {e.name for e in store.list_entities()} >= {"user", "item", "category"}
    views = {v.name for v in store.list_feature_views()}
    assert views >= {"user_stats", "item_stats", "category_stats", "item_attributes"}
    service = store.get_feature_service(FEATURE_SERVICE)
    assert {p.name for p in service.feature_view_projections} == {
        "user_stats",
        "item_stats",
        "category_stats",
        "user_item_stats",
        "user_category_stats",
        "user_sequence",
    }
    pairs = store.get_feature_view("user_item_stats")
    assert sorted(pairs.join_keys) == ["item_id", "user_id"]


def _brute_counts(
    events: Path, rows: pd.DataFrame, key: str, behaviour: str, interval: int, window: int | None
) -> np.ndarray:
    """Events of the row's entity strictly before the snapshot floor(t0), optionally in a window."""
    con = duckdb.connect()
    con.register("probe", rows[[key, "t0"]].reset_index(drop=True).reset_index())
    lower = f"AND e.ts >= p.snap - {window}" if window else ""
    out = con.execute(f"""
        WITH p AS (SELECT index, {key}, t0 // {interval} * {interval} AS snap FROM probe)
        SELECT p.index, count(e.ts) FROM p LEFT JOIN read_parquet('{events}') e
          ON e.{key} = p.{key} AND e.behavior = '{behaviour}' AND e.ts < p.snap {lower}
             AND e.ts >= 1511539200 AND e.ts < 1512316800
        GROUP BY p.index ORDER BY p.index""").fetchall()
    return np.array([c for _, c in out], dtype=np.float32)


@pytest.mark.parametrize(
    ("view", "key", "feature", "behaviour", "window"),
    [
        ("user_stats", "user_id", "pv_all", "pv", None),
        ("item_stats", "item_id", "pv_24h", "pv", 86400),
        ("category_stats", "category_id", "cart_72h", "cart", 259200),
        ("user_stats", "user_id", "buy_24h", "buy", 86400),
    ],
)
def test_features_equal_counts_strictly_before_t0(
    pipeline_run: PipelineRun, view: str, key: str, feature: str, behaviour: str, window: int | None
) -> None:
    ts = pd.read_parquet(pipeline_run.training_set).sample(3000, random_state=0)
    interval = pipeline_run.params.features.interval(view.removesuffix("_stats"))
    expected = _brute_counts(pipeline_run.events, ts, key, behaviour, interval, window)
    got = ts[f"{view}__{feature}"].to_numpy()
    np.testing.assert_array_equal(got, expected)


WINDOW = "e.ts >= 1511539200 AND e.ts < 1512316800"


@pytest.mark.parametrize(
    ("view", "keys", "behaviour"),
    [
        ("user_item_stats", ("user_id", "item_id"), "pv"),
        ("user_item_stats", ("user_id", "item_id"), "cart"),
        ("user_category_stats", ("user_id", "category_id"), "pv"),
        ("user_category_stats", ("user_id", "category_id"), "buy"),
    ],
)
def test_pair_features_are_the_pairs_events_strictly_before_t0(
    pipeline_run: PipelineRun, view: str, keys: tuple[str, str], behaviour: str
) -> None:
    """Counts and last times of a user x item or user x category pair's events, one by one
    from the events, for exposures and sampled items (1 s grain: exact as of t0)."""
    ts = pd.read_parquet(pipeline_run.training_set).sample(3000, random_state=2)
    con = duckdb.connect()
    con.register("probe", ts[[*keys, "t0"]].reset_index(drop=True).reset_index())
    on = " AND ".join(f"e.{k} = p.{k}" for k in keys)
    got = con.execute(f"""
        SELECT p.index, count(e.ts) AS n, coalesce(max(e.ts), 0) AS last FROM probe p
        LEFT JOIN read_parquet('{pipeline_run.events}') e
          ON {on} AND e.behavior = '{behaviour}' AND e.ts < p.t0 AND {WINDOW}
        GROUP BY p.index ORDER BY p.index""").fetchnumpy()
    counts = ts[f"{view}__{behaviour}_count"].to_numpy()
    np.testing.assert_array_equal(counts, got["n"].astype(np.float32))
    np.testing.assert_array_equal(ts[f"{view}__{behaviour}_last_ts"].to_numpy(), got["last"])
    # The check saw real history, not only zeros. The rarest pairs here are user x item carts:
    # about 2% of the examples on the sample (about 60 of 3000 rows).
    assert (counts > 0).sum() > 30


def test_sequence_is_the_users_last_events_strictly_before_t0(pipeline_run: PipelineRun) -> None:
    """Each slot of the user's recent events, from the events one by one: the k-th latest
    event before t0 (ties in a second: by behaviour code, then item, latest first)."""
    length = pipeline_run.params.features.sequence_length
    ts = pd.read_parquet(pipeline_run.training_set).sample(400, random_state=4)
    events = pd.read_parquet(pipeline_run.events).query("1511539200 <= ts < 1512316800")
    events = events.assign(code=events["behavior"].map(BEHAVIOUR_CODES).fillna(5).astype(int))
    by_user = {u: e for u, e in events.groupby("user_id")}
    filled = 0
    for _, row in ts.iterrows():
        mine = by_user.get(row["user_id"], events.iloc[:0])
        before = mine[mine["ts"] < row["t0"]].sort_values(["ts", "code", "item_id"]).tail(length)
        latest = before.iloc[::-1]
        for k in range(length):
            slot = [row[f"user_sequence__{f}_{k}"] for f in ("item", "category", "behavior", "ts")]
            if k < len(latest):
                e = latest.iloc[k]
                assert slot == [e["item_id"], e["category_id"], e["code"], e["ts"]], (row, k)
                filled += 1
            else:
                assert slot == [0, 0, 0, 0], (row, k)
    assert filled > 400 * length // 2


def test_no_event_at_or_after_t0_reaches_features(
    pipeline_run: PipelineRun, tmp_path: Path
) -> None:
    """Rebuild the features from events truncated at a cutoff C that is some exposure's t0:
    every exposure with t0 <= C must get exactly the same features, so nothing at or after
    its t0 (its own first view included) was used."""
    ts = pd.read_parquet(pipeline_run.training_set)
    cutoff = int(ts.loc[ts["split"] == "test", "t0"].min())
    truncated = tmp_path / "events.parquet"
    duckdb.sql(
        f"COPY (SELECT * FROM read_parquet('{pipeline_run.events}') WHERE ts < {cutoff}) "
        f"TO '{truncated}' (FORMAT parquet)"
    )
    params = load_params(write_params(tmp_path, pipeline_run.params.data.raw_path))
    repo = copy_feature_repo(tmp_path / "feature_repo")
    early = pd.read_parquet(pipeline_run.exposures).query(f"t0 <= {cutoff}")
    early_path = tmp_path / "exposures.parquet"
    early.to_parquet(early_path)
    queries = pd.read_parquet(pipeline_run.queries).query(f"t0 <= {cutoff}")
    queries_path = tmp_path / "queries.parquet"
    queries.to_parquet(queries_path)
    build_features(
        truncated,
        early_path,
        queries_path,
        repo,
        tmp_path / "training_set.parquet",
        tmp_path / "ranking_set.parquet",
        params,
    )

    # Every view's every feature: stats, user x item and user x category pairs, sequences.
    rebuilt = pd.read_parquet(tmp_path / "training_set.parquet")
    keys = ["user_id", "item_id", "t0"]
    merged = ts.merge(rebuilt, on=keys, suffixes=("", "_truncated"))
    assert len(merged) == len(early) > 100_000
    assert (merged["t0"] == cutoff).any()  # the boundary case is covered
    columns = feature_columns(ts)
    assert len(columns) >= 54 + 16 + 4 * params.features.sequence_length
    for column in columns:
        np.testing.assert_array_equal(merged[column], merged[f"{column}_truncated"], err_msg=column)
    ranked = pd.read_parquet(pipeline_run.ranking_set).query(f"t0 <= {cutoff}")
    again = pd.read_parquet(tmp_path / "ranking_set.parquet")
    both = ranked.merge(again, on=["query_id", "item_id"], suffixes=("", "_truncated"))
    assert len(both) == len(ranked) > 10_000
    for column in columns:
        np.testing.assert_array_equal(both[column], both[f"{column}_truncated"], err_msg=column)


def test_online_store_serves_latest_values(pipeline_run: PipelineRun) -> None:
    store = open_store(pipeline_run.feature_repo)
    events = pd.read_parquet(pipeline_run.events).query("1511539200 <= ts < 1512316800")
    user = int(events["user_id"].value_counts().index[0])
    online = store.get_online_features(
        features=[f"user_stats:{f}" for f in stat_features()],
        entity_rows=[{"user_id": user}, {"user_id": 999_999_999}],
        full_feature_names=True,
    ).to_dict()
    mine = events[events["user_id"] == user]
    assert online["user_stats__pv_all"][0] == (mine["behavior"] == "pv").sum()
    assert online["user_stats__buy_all"][0] == (mine["behavior"] == "buy").sum()
    assert online["user_stats__pv_all"][1] is None  # unknown user


def test_default_asof_join_equals_feast_historical_features(
    pipeline_run: PipelineRun, tmp_path: Path
) -> None:
    """The default engine, the DuckDB ASOF JOIN, gives exactly what `features.offline_join:
    feast` gives, Feast's get_historical_features on its file offline store: same rows, order,
    dtypes and values. On a sample of exposures: Feast's file store pairs every exposure with
    every row of its entities in memory (over 20 GB for all 59,874 at the 1 s grain)."""
    assert pipeline_run.params.features.offline_join == "duckdb_asof"
    feast = pipeline_run.params.model_copy(
        update={
            "features": pipeline_run.params.features.model_copy(update={"offline_join": "feast"})
        }
    )
    sample = tmp_path / "exposures.parquet"
    pd.read_parquet(pipeline_run.exposures).sample(2000, random_state=3).to_parquet(
        sample, index=False
    )
    store = open_store(pipeline_run.feature_repo)
    by_feast, by_asof = tmp_path / "feast.parquet", tmp_path / "asof.parquet"
    assert training_set(store, sample, by_feast, feast) == 2000
    assert training_set(store, sample, by_asof, pipeline_run.params) == 2000
    got, expected = pd.read_parquet(by_feast), pd.read_parquet(by_asof)
    pd.testing.assert_frame_equal(got, expected)
    # A (user, item) pair recurs at several moments (a sampled item of the user's recent views),
    # so an example is its pair at its t0.
    whole = pd.read_parquet(pipeline_run.training_set)
    pd.testing.assert_frame_equal(
        expected, whole.merge(expected[["user_id", "item_id", "t0"]])[expected.columns]
    )


def test_asof_join_gives_unknown_or_too_early_entities_zeros(
    pipeline_run: PipelineRun, tmp_path: Path
) -> None:
    """Entities without a feature row at or before t0 (unknown ids, or t0 before every
    snapshot) get all-zero features, and every exposure row stays."""
    known = pd.read_parquet(pipeline_run.training_set).sample(200, random_state=1)
    exposures = pd.read_parquet(pipeline_run.exposures)
    probe = exposures.merge(known[["user_id", "item_id", "t0"]]).copy()
    unknown = probe.head(3).assign(user_id=-1, item_id=-2, category_id=-3)
    early = probe.head(2).assign(t0=pipeline_run.params.protocol.window_start - 7200)
    path = tmp_path / "exposures.parquet"
    pd.concat([probe, unknown, early]).to_parquet(path, index=False)
    out = tmp_path / "training_set.parquet"
    store = open_store(pipeline_run.feature_repo)
    assert asof_training_set(store, path, out, pipeline_run.params) == len(probe) + 5

    got = pd.read_parquet(out)
    features = feature_columns(got)
    zero_rows = got[
        (got["user_id"] == -1) | (got["t0"] < pipeline_run.params.protocol.window_start)
    ]
    assert len(zero_rows) == 5
    assert (zero_rows[features].to_numpy() == 0).all()
    rest = got.drop(zero_rows.index).merge(
        known, on=["user_id", "item_id", "t0"], suffixes=("", "_k")
    )
    assert len(rest) == len(probe)
    for column in features:
        np.testing.assert_array_equal(rest[column], rest[f"{column}_k"], err_msg=column)
    assert rest["user_stats__pv_all"].gt(0).any()


def test_duckdb_settings_come_from_params(tmp_path: Path) -> None:
    data = DataParams(duckdb_memory_limit="300MB", duckdb_threads=1, duckdb_temp_directory=tmp_path)
    con = connect(data)
    settings = dict(
        con.execute(
            "SELECT name, value FROM duckdb_settings() "
            "WHERE name IN ('memory_limit', 'threads', 'temp_directory')"
        ).fetchall()
    )
    assert settings["threads"] == "1"
    assert settings["temp_directory"] == str(tmp_path)
    assert settings["memory_limit"].startswith(("286", "300"))


def test_spill_failure_is_a_clear_error_and_writes_no_training_set(
    pipeline_run: PipelineRun, tmp_path: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    data = pipeline_run.params.data.model_copy(
        update={"duckdb_memory_limit": "30MB", "duckdb_temp_directory": blocker / "spill"}
    )
    params = pipeline_run.params.model_copy(update={"data": data})
    out = tmp_path / "training_set.parquet"
    with pytest.raises(ShopguideError) as info:
        build_features(
            pipeline_run.events,
            pipeline_run.exposures,
            pipeline_run.queries,
            copy_feature_repo(tmp_path / "repo"),
            out,
            tmp_path / "ranking_set.parquet",
            params,
        )
    message = str(info.value)
    assert str(blocker / "spill") in message
    assert "data.duckdb_temp_directory" in message and "30MB" in message
    assert not out.exists()
