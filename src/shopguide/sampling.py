"""Items the user did not touch, sampled at each exposure's moment (training over the entire
space).

Three samplers, each point-in-time (only events before the moment decide what can be drawn):

* `recent`: distinct items the user viewed in the `lookback_s` before the moment (not the
  exposure's own item), drawn without replacement in a seeded hash order. These are what a
  shopping guide ranks most often, and what taobao-rank-v1's candidates are.
* `popularity`: the items of page views by anyone in the lookback before the moment, each view
  equally likely, so items in proportion to their recent popularity.
* `uniform`: any item seen (any event) before the moment, equally likely.

Draws that repeat an item at the same moment, or hit an exposure of the same user at that
moment, are dropped, so a moment may get a few fewer rows than asked. The same seed and events
give the same rows.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from shopguide.config import SamplingParams

# Moments drawn for at once: bounds the draws held in memory (moments x samplers' counts).
CHUNK_MOMENTS = 2_000_000
# Exposures per pass of the `recent` sampler's join (a pass takes a hash share of the users).
RECENT_PASS_EXPOSURES = 1_000_000


def _draws(
    moments: np.ndarray, times: np.ndarray, lookback: int | None, count: int, rng
) -> tuple[np.ndarray, np.ndarray]:
    """(row of the moment, index into `times`) for `count` draws per moment among the sorted
    `times` in [moment - lookback, moment) (lookback None: every time before the moment);
    moments with nothing eligible get none."""
    hi = np.searchsorted(times, moments, side="left")
    lo = np.zeros_like(hi) if lookback is None else np.searchsorted(times, moments - lookback)
    size = hi - lo
    pick = lo[:, None] + np.floor(rng.random((len(moments), count)) * size[:, None]).astype(
        np.int64
    )
    rows = np.repeat(np.arange(len(moments)), count)
    valid = np.repeat(size > 0, count)
    return rows[valid], pick.ravel()[valid]


def add_sampled_rows(con, events: str, exposures: str, params: SamplingParams) -> int:
    """Create the temp table `examples` (user_id, item_id, category_id, t0, sampled) holding
    every row of `exposures` (sampled = false) and the items sampled at its moment; return the
    number of sampled rows. `events` and `exposures` name relations on `con`."""
    con.execute(
        f"""CREATE TEMP TABLE item_categories AS
            SELECT item_id, arg_min(category_id, ts) AS category_id, min(ts) AS first_seen
            FROM {events} GROUP BY item_id"""
    )
    con.execute("CREATE TEMP TABLE samples (user_id BIGINT, item_id BIGINT, t0 BIGINT)")
    if params.recent:
        # one pass per share of the users: the join and its window grow with the exposures
        # and ran out of DuckDB's 2 GB in one pass at 10M events
        (rows,) = con.execute(f"SELECT count(*) FROM {exposures}").fetchone()
        passes = max(1, -(-int(rows) // RECENT_PASS_EXPOSURES))
        for share in range(passes):
            con.execute(
                f"""INSERT INTO samples
                    SELECT x.user_id, e.item_id, x.t0
                    FROM {exposures} x JOIN {events} e
                      ON e.user_id = x.user_id AND e.behavior = 'pv' AND e.item_id <> x.item_id
                     AND e.ts >= x.t0 - {params.lookback_s} AND e.ts < x.t0
                    WHERE hash(x.user_id) % {passes} = {share}
                    GROUP BY x.user_id, x.item_id, x.t0, e.item_id
                    QUALIFY row_number() OVER (
                        PARTITION BY x.user_id, x.item_id, x.t0
                        ORDER BY hash(x.user_id, x.item_id, e.item_id, x.t0, {params.seed})
                    ) <= {params.recent}"""
            )
    if params.popularity or params.uniform:
        _add_drawn(con, events, exposures, params)
    con.execute(
        f"""CREATE TEMP TABLE examples AS
            SELECT user_id, item_id, category_id, t0, false AS sampled FROM {exposures}
            UNION ALL
            SELECT s.user_id, s.item_id, c.category_id, s.t0, true AS sampled
            FROM (SELECT DISTINCT user_id, item_id, t0 FROM samples) s
            JOIN item_categories c USING (item_id)
            ANTI JOIN {exposures} x
              ON x.user_id = s.user_id AND x.item_id = s.item_id AND x.t0 = s.t0"""
    )
    (count,) = con.execute("SELECT count(*) FROM examples WHERE sampled").fetchone()
    return int(count)


def _add_drawn(con, events: str, exposures: str, params: SamplingParams) -> None:
    """The popularity and uniform samplers: seeded draws in numpy, chunk by chunk of moments."""
    views = con.execute(
        f"SELECT ts, item_id FROM {events} WHERE behavior = 'pv' ORDER BY ts, item_id"
    ).fetchnumpy()
    firsts = con.execute(
        "SELECT first_seen, item_id FROM item_categories ORDER BY first_seen, item_id"
    ).fetchnumpy()
    moments = con.execute(
        f"SELECT user_id, t0 FROM {exposures} ORDER BY t0, user_id, item_id"
    ).fetchnumpy()
    rng = np.random.default_rng(params.seed)
    for start in range(0, len(moments["t0"]), CHUNK_MOMENTS):
        users = moments["user_id"][start : start + CHUNK_MOMENTS]
        t0 = moments["t0"][start : start + CHUNK_MOMENTS]
        parts = []
        for count, times, items, lookback in (
            (params.popularity, views["ts"], views["item_id"], params.lookback_s),
            (params.uniform, firsts["first_seen"], firsts["item_id"], None),
        ):
            if count:
                rows, pick = _draws(t0, np.asarray(times), lookback, count, rng)
                parts.append((users[rows], np.asarray(items)[pick], t0[rows]))
        if not parts:
            continue
        drawn = pa.table(
            {
                "user_id": np.concatenate([p[0] for p in parts]),
                "item_id": np.concatenate([p[1] for p in parts]),
                "t0": np.concatenate([p[2] for p in parts]),
            }
        )
        con.register("drawn", drawn)
        con.execute("INSERT INTO samples SELECT user_id, item_id, t0 FROM drawn")
        con.unregister("drawn")
