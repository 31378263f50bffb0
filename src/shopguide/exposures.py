"""Examples, labels and the time split (protocols taobao-mtl-v1 and taobao-rank-v1).

An exposure is a (user, item) pair with at least one `pv` inside the window; its moment t0 is
the first `pv`. Beside every exposure, `shopguide.sampling` adds items the user did not touch at
the same moment (`sampled` rows: the entire space). Every row, exposure or sampled, is labelled
the same way: a task is 1 when the user has the task's event on the item at or after t0 and,
with `protocol.label_horizon_s`, before t0 + horizon. A row whose horizon passes the end of its
split's data is censored (dropped): train rows end at test_start, so no label reads the test
period; test rows end at the last event. Train/test split by t0. Grouped passes in DuckDB, no
per-row Python.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from shopguide.config import TASK_BEHAVIOUR, AuxTaskParams, Params, ProtocolParams
from shopguide.duck import connect, spill_directory, sql_path
from shopguide.errors import ShopguideError
from shopguide.io import atomic_path
from shopguide.sampling import add_sampled_rows

log = logging.getLogger(__name__)

EXPOSURE_KEYS = ("user_id", "item_id", "category_id")


def window_events_sql(events: Path, protocol: ProtocolParams) -> str:
    """Events kept by the protocol's window (step 2), as a SQL relation."""
    return (
        f"(SELECT * FROM read_parquet({sql_path(events)}) "
        f"WHERE ts >= {protocol.window_start} AND ts < {protocol.window_end})"
    )


def _in_horizon(protocol: ProtocolParams) -> str:
    """SQL condition on a joined event `e` of row `r`: inside the row's label horizon."""
    if protocol.label_horizon_s is None:
        return "e.ts >= r.t0"
    return f"e.ts >= r.t0 AND e.ts < r.t0 + {protocol.label_horizon_s}"


def aux_label_sql(task: AuxTaskParams) -> str:
    """An auxiliary label from the row's `task.behavior` events inside its horizon."""
    count = f"count(e.ts) FILTER (WHERE e.behavior = '{task.behavior}')"
    if task.type == "binary":
        return f"({count} > 0)::TINYINT AS {task.name}"
    if task.type == "multiclass":
        return f"least({count}, {task.n_classes - 1})::INTEGER AS {task.name}"
    value = f"ln(1 + {count})" if task.transform == "log1p" else count
    return f"({value})::FLOAT AS {task.name}"


def label_columns_sql(protocol: ProtocolParams) -> str:
    """The task and auxiliary label columns of a row grouped with its in-horizon events `e`."""
    return ",\n".join(
        [
            f"(count(e.ts) FILTER (WHERE e.behavior = '{TASK_BEHAVIOUR[t]}') > 0)::TINYINT AS {t}"
            for t in protocol.tasks
        ]
        + [aux_label_sql(a) for a in protocol.aux_tasks]
    )


# Examples (exposures and sampled rows) labelled per pass (a hash share of the users).
LABEL_PASS_ROWS = 8_000_000


def censor_sql(protocol: ProtocolParams, data_end: int) -> str:
    """SQL condition keeping the rows (`r`) whose label horizon ends inside their split's data."""
    if protocol.label_horizon_s is None:
        return "true"
    h = protocol.label_horizon_s
    return (
        f"(r.t0 + {h} <= {protocol.test_start} OR r.t0 >= {protocol.test_start}) "
        f"AND r.t0 + {h} <= {data_end}"
    )


def build_exposures(events: Path, out: Path, params: Params) -> dict:
    """Write the labelled examples (exposures and sampled rows) to `out`; return split sizes,
    positive counts of the exposures, sampled and censored row counts."""
    protocol = params.protocol
    con = connect(params.data)
    window = window_events_sql(events, protocol)
    con.execute(f"CREATE TEMP VIEW window_events AS SELECT * FROM {window}")
    (last,) = con.execute("SELECT max(ts) FROM window_events").fetchone()
    if last is None:
        raise ShopguideError(
            f"{events}: no exposures: no events between {protocol.window_start} and "
            f"{protocol.window_end}; check protocol.window_start/window_end"
        )
    data_end = min(protocol.window_end, last + 1)
    con.execute(
        """CREATE TEMP TABLE exposures AS
           SELECT user_id, item_id, arg_min(category_id, ts) AS category_id, min(ts) AS t0
           FROM window_events WHERE behavior = 'pv' GROUP BY user_id, item_id"""
    )
    sampled = add_sampled_rows(con, "window_events", "exposures", params.sampling)
    (total,) = con.execute("SELECT count(*) FROM examples").fetchone()
    # Labelled a hash share of the users at a time, then sorted as one: the join and its
    # aggregate over every example ran out of DuckDB's 2 GB at 10M events in one pass.
    passes = max(1, -(-int(total) // LABEL_PASS_ROWS))
    spill = spill_directory(params.data)
    spill.mkdir(parents=True, exist_ok=True)
    with (
        atomic_path(out) as tmp,
        tempfile.TemporaryDirectory(dir=spill, prefix="exposures-") as work,
    ):
        shares = [Path(work) / f"share-{k}.parquet" for k in range(passes)]
        for share, path in enumerate(shares):
            con.execute(
                f"""COPY (
                    SELECT r.user_id, r.item_id, r.category_id, r.t0,
                           {label_columns_sql(protocol)},
                           CASE WHEN r.t0 >= {protocol.test_start} THEN 'test' ELSE 'train' END
                               AS split,
                           r.sampled
                    FROM examples r
                    LEFT JOIN window_events e
                        ON e.user_id = r.user_id AND e.item_id = r.item_id
                       AND {_in_horizon(protocol)}
                    WHERE {censor_sql(protocol, data_end)}
                      AND hash(r.user_id) % {passes} = {share}
                    GROUP BY ALL
                ) TO {sql_path(path)} (FORMAT parquet)"""
            )
        listed = ", ".join(sql_path(p) for p in shares)
        con.execute(
            f"""COPY (SELECT * FROM read_parquet([{listed}]) ORDER BY t0, user_id, item_id)
                TO {sql_path(tmp)} (FORMAT parquet)"""
        )
        sums = ", ".join(f"sum({t}) FILTER (WHERE NOT sampled)" for t in protocol.tasks)
        rows = con.execute(
            f"""SELECT split, count(*) FILTER (WHERE NOT sampled),
                       count(*) FILTER (WHERE sampled), {sums}
                FROM read_parquet({sql_path(tmp)}) GROUP BY split"""
        ).fetchall()
        if not rows:
            raise ShopguideError(
                f"{events}: no exposures left (no 'pv' events between {protocol.window_start} "
                f"and {protocol.window_end}, or every one censored by "
                f"protocol.label_horizon_s={protocol.label_horizon_s})"
            )
    stats: dict = {
        split: {
            "exposures": n,
            "sampled": s,
            **{f"{t}_positives": int(v or 0) for t, v in zip(protocol.tasks, pos, strict=True)},
        }
        for split, n, s, *pos in rows
    }
    kept = sum(v["exposures"] + v["sampled"] for v in stats.values())
    stats["censored_rows"] = total - kept
    stats["sampled_rows"] = sampled
    stats["label_horizon_s"] = protocol.label_horizon_s
    log.info("built examples %s", stats)
    return stats
