"""Exposures, labels and the time split of protocol taobao-mtl-v1.

An exposure is a (user, item) pair with at least one `pv` inside the window; t0 is its first
`pv`; a task label is 1 when the same pair has that behaviour at or after t0. Train/test split
by t0. One grouped pass over the events, no per-row Python.
"""

from __future__ import annotations

import logging
from pathlib import Path

from shopguide.config import AuxTaskParams, DataParams, ProtocolParams
from shopguide.duck import connect, sql_path
from shopguide.errors import ShopguideError
from shopguide.io import atomic_path

log = logging.getLogger(__name__)

EXPOSURE_KEYS = ("user_id", "item_id", "category_id")


def window_events_sql(events: Path, protocol: ProtocolParams) -> str:
    """Events kept by the protocol's window (step 2), as a SQL relation."""
    return (
        f"(SELECT * FROM read_parquet({sql_path(events)}) "
        f"WHERE ts >= {protocol.window_start} AND ts < {protocol.window_end})"
    )


def aux_label_sql(task: AuxTaskParams) -> str:
    """An auxiliary label from the pair's `task.behavior` events at or after t0 (`first_pv`)."""
    count = f"count(*) FILTER (WHERE behavior = '{task.behavior}' AND ts >= first_pv)"
    if task.type == "binary":
        return f"({count} > 0)::TINYINT AS {task.name}"
    if task.type == "multiclass":
        return f"least({count}, {task.n_classes - 1})::INTEGER AS {task.name}"
    value = f"ln(1 + {count})" if task.transform == "log1p" else count
    return f"({value})::FLOAT AS {task.name}"


def build_exposures(events: Path, out: Path, protocol: ProtocolParams, data: DataParams) -> dict:
    """Write the labelled exposure table to `out` and return split sizes and positive counts."""
    con = connect(data)
    labels = ",\n".join(
        [
            f"coalesce(max(ts) FILTER (WHERE behavior = '{t}') >= "
            f"min(ts) FILTER (WHERE behavior = 'pv'), false)::TINYINT AS {t}"
            for t in protocol.tasks
        ]
        + [aux_label_sql(a) for a in protocol.aux_tasks]
    )
    source = window_events_sql(events, protocol)
    if protocol.aux_tasks:  # counts at or after t0 need each pair's t0 on its events
        source = (
            "(SELECT *, min(CASE WHEN behavior = 'pv' THEN ts END) "
            f"OVER (PARTITION BY user_id, item_id) AS first_pv FROM {source})"
        )
    with atomic_path(out) as tmp:
        con.execute(
            f"""COPY (
                SELECT user_id, item_id,
                       arg_min(category_id, ts) FILTER (WHERE behavior = 'pv') AS category_id,
                       min(ts) FILTER (WHERE behavior = 'pv') AS t0,
                       {labels},
                       CASE WHEN min(ts) FILTER (WHERE behavior = 'pv') >= {protocol.test_start}
                            THEN 'test' ELSE 'train' END AS split
                FROM {source}
                GROUP BY user_id, item_id
                HAVING count(*) FILTER (WHERE behavior = 'pv') > 0
                ORDER BY t0, user_id, item_id
            ) TO {sql_path(tmp)} (FORMAT parquet)"""
        )
        sums = ", ".join(f"sum({t})" for t in protocol.tasks)
        rows = con.execute(
            f"SELECT split, count(*), {sums} FROM read_parquet({sql_path(tmp)}) GROUP BY split"
        ).fetchall()
        if not rows:
            raise ShopguideError(
                f"{events}: no exposures (no 'pv' events between {protocol.window_start} and "
                f"{protocol.window_end}); check protocol.window_start/window_end"
            )
    stats = {
        split: {
            "exposures": n,
            **{f"{t}_positives": int(v) for t, v in zip(protocol.tasks, pos, strict=True)},
        }
        for split, n, *pos in rows
    }
    log.info("built exposures %s", stats)
    return stats
