"""The data card every adapter returns: what was read, in a few numbers people can check."""

from __future__ import annotations

import logging
from pathlib import Path

from shopguide.config import DataParams, Params
from shopguide.duck import connect, sql_path
from shopguide.exposures import censor_sql, window_events_sql

log = logging.getLogger(__name__)

PROPOSED_TEST_SHARE = 0.25  # about the taobao-mtl-v1 sample's (15,562 of 59,874 exposures)


def data_card(
    adapter: str,
    source: Path,
    events: Path,
    exposures: Path,
    tasks: tuple[str, ...],
    data: DataParams,
    **extra: object,
) -> dict:
    """Rows, users, items, categories, time span, behaviour mix and positive rates per split."""
    con = connect(data)
    ev = f"read_parquet({sql_path(events)})"
    rows, users, items, categories, first, last = con.execute(
        f"""SELECT count(*), count(DISTINCT user_id), count(DISTINCT item_id),
                   count(DISTINCT category_id), min(ts), max(ts) FROM {ev}"""
    ).fetchone()
    behaviours = dict(
        con.execute(f"SELECT behavior, count(*) FROM {ev} GROUP BY 1 ORDER BY 1").fetchall()
    )
    table = f"read_parquet({sql_path(exposures)})"
    columns = {r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {table}").fetchall()}
    # Positive rates of the exposures; sampled rows (the entire space) are counted apart.
    real = "NOT sampled" if "sampled" in columns else "true"
    rates = ", ".join(f"avg({t}) FILTER (WHERE {real})" for t in tasks)
    splits = {
        split: {
            "exposures": n,
            "sampled": sampled,
            "positive_rate": dict(zip(tasks, vals, strict=True)),
        }
        for split, n, sampled, *vals in con.execute(
            f"SELECT split, count(*) FILTER (WHERE {real}), count(*) FILTER (WHERE NOT {real}), "
            f"{rates} FROM {table} GROUP BY split ORDER BY split"
        ).fetchall()
    }
    return {
        "adapter": adapter,
        "source": str(source),
        "events": {
            "rows": rows,
            "users": users,
            "items": items,
            "categories": categories,
            "time_span": [first, last],
            "behaviours": behaviours,
        },
        "exposures": splits,
        **extra,
    }


def time_split_check(events: Path, exposures: Path, params: Params) -> dict:
    """For a time split (protocol.test_start): when it leaves fewer train than test
    exposures, a warning and, for the data card, the `proposed_split` that would leave about
    the last PROPOSED_TEST_SHARE of exposures (by t0) for testing; nothing otherwise. Sampled
    rows (the entire space) are not exposures and are not counted. Which exposures are
    censored depends on test_start (a train row's label horizon must end before it), so the
    proposal is counted from every exposure of the window's events, censored at the proposed
    test_start as `build_exposures` would: its counts are what an ingest with it gives."""
    con = connect(params.data)
    protocol = params.protocol
    source = f"read_parquet({sql_path(exposures)})"
    columns = {r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {source}").fetchall()}
    real = "NOT sampled" if "sampled" in columns else "true"
    train, test = con.execute(
        f"""SELECT count(*) FILTER (WHERE split = 'train'), count(*) FILTER (WHERE split = 'test')
            FROM {source} WHERE {real}"""
    ).fetchone()
    if train >= test:
        return {}
    window = window_events_sql(events, protocol)
    (last,) = con.execute(f"SELECT max(ts) FROM {window}").fetchone()
    data_end = min(protocol.window_end, last + 1)
    con.execute(
        f"""CREATE TEMP TABLE moments AS
            SELECT min(ts) AS t0 FROM {window} WHERE behavior = 'pv' GROUP BY user_id, item_id"""
    )
    # The share is of the exposures every test_start keeps (not those whose horizon passes
    # the data's end); the rows censored before the proposed test_start come off train.
    h = protocol.label_horizon_s or 0
    (start,) = con.execute(
        f"""SELECT quantile_disc(t0, {1 - PROPOSED_TEST_SHARE}) FROM moments
            WHERE t0 + {h} <= {data_end}"""
    ).fetchone()
    proposed = protocol.model_copy(update={"test_start": int(start)})
    proposed_train, proposed_test = con.execute(
        f"""SELECT count(*) FILTER (WHERE r.t0 < {start}), count(*) FILTER (WHERE r.t0 >= {start})
            FROM moments r WHERE {censor_sql(proposed, data_end)}"""
    ).fetchone()
    proposal = {
        "protocol.test_start": int(start),
        "train_exposures": proposed_train,
        "test_exposures": proposed_test,
        "reason": f"protocol.test_start leaves {train} train against {test} test exposures",
    }
    log.warning(
        "%s: protocol.test_start leaves %d train against %d test exposures; test_start: %d "
        "would leave %d against %d (the data card's proposed_split)",
        exposures,
        train,
        test,
        start,
        proposed_train,
        proposed_test,
    )
    return {"proposed_split": proposal}
