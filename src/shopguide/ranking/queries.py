"""The ranking queries of protocol taobao-rank-v1, from any event log in the canonical schema.

For each task b with an event type other than the page view: the user's first b event on an
item, at time t, when they viewed that item in the `lookback_s` before t. Its candidates are
the distinct items the user viewed in that lookback, except those already acted on with b
before t; the acted item is the positive. A query needs `min_candidates`. Exact duplicate
events are dropped first. Queries at t >= test_start are the test split, earlier ones the
train split (training queries for a learned ranker).

The table has one row per (query, candidate), with the candidate's moment `t0` = t, so the
features step joins it point-in-time exactly like the training examples.
"""

from __future__ import annotations

import logging
from pathlib import Path

from shopguide.config import TASK_BEHAVIOUR, Params
from shopguide.duck import connect, sql_path
from shopguide.exposures import window_events_sql
from shopguide.io import atomic_path

log = logging.getLogger(__name__)

QUERY_COLUMNS = ("query_id", "task", "user_id", "item_id", "category_id", "t0", "positive", "split")


def ranked_tasks(tasks: tuple[str, ...]) -> list[str]:
    """The tasks with queries: a page view has no earlier page view of its own item."""
    return [t for t in tasks if TASK_BEHAVIOUR.get(t, t) != "pv"]


def _task_sql(task: str, params: Params) -> str:
    behaviour = TASK_BEHAVIOUR.get(task, task)
    rank = params.protocol.ranking
    lookback = rank.lookback_s
    return f"""
        (WITH firsts AS (
            SELECT user_id, item_id, min(ts) AS t FROM ev WHERE behavior = '{behaviour}'
            GROUP BY user_id, item_id),
        q AS (
            SELECT f.* FROM firsts f SEMI JOIN ev e
              ON e.user_id = f.user_id AND e.item_id = f.item_id AND e.behavior = 'pv'
             AND e.ts >= f.t - {lookback} AND e.ts < f.t),
        candidates AS (
            SELECT DISTINCT q.user_id, q.t, q.item_id AS positive_item, e.item_id
            FROM q JOIN ev e
              ON e.user_id = q.user_id AND e.behavior = 'pv'
             AND e.ts >= q.t - {lookback} AND e.ts < q.t),
        kept AS (
            SELECT c.* FROM candidates c LEFT JOIN firsts a
              ON a.user_id = c.user_id AND a.item_id = c.item_id
            WHERE c.item_id = c.positive_item OR a.t IS NULL OR a.t >= c.t)
        SELECT '{task}' AS task, user_id, t, positive_item, item_id FROM kept
        QUALIFY count(*) OVER (PARTITION BY user_id, t, positive_item) >= {rank.min_candidates})
    """


def build_queries(events: Path, out: Path, params: Params) -> dict:
    """Write every task's queries (both splits) to `out`; return the counts per task and split."""
    con = connect(params.data)
    window = window_events_sql(events, params.protocol)
    con.execute(f"CREATE TEMP TABLE ev AS SELECT DISTINCT * FROM {window}")
    con.execute(
        """CREATE TEMP TABLE item_categories AS
           SELECT item_id, arg_min(category_id, ts) AS category_id FROM ev GROUP BY item_id"""
    )
    tasks = ranked_tasks(params.protocol.tasks)
    union = " UNION ALL ".join(_task_sql(t, params) for t in tasks)
    if not union:
        union = (
            "SELECT NULL::VARCHAR AS task, NULL::BIGINT AS user_id, NULL::BIGINT AS t, "
            "NULL::BIGINT AS positive_item, NULL::BIGINT AS item_id WHERE false"
        )
    test_start = params.protocol.test_start
    with atomic_path(out) as tmp:
        con.execute(
            f"""COPY (
                SELECT dense_rank() OVER (ORDER BY task, t, user_id, positive_item) - 1
                           AS query_id,
                       task, user_id, item_id, c.category_id, t AS t0,
                       (item_id = positive_item)::TINYINT AS positive,
                       CASE WHEN t >= {test_start} THEN 'test' ELSE 'train' END AS split
                FROM ({union}) JOIN item_categories c USING (item_id)
                ORDER BY query_id, item_id
            ) TO {sql_path(tmp)} (FORMAT parquet)"""
        )
        rows = con.execute(
            f"""SELECT task, split, count(DISTINCT query_id), count(DISTINCT user_id), count(*)
                FROM read_parquet({sql_path(tmp)}) GROUP BY ALL ORDER BY ALL"""
        ).fetchall()
    stats: dict = {}
    for task, split, queries, users, candidates in rows:
        stats.setdefault(split, {})[task] = {
            "queries": queries,
            "users": users,
            "candidates": candidates,
        }
    log.info("ranking queries (taobao-rank-v1): %s", stats)
    return stats
