"""The data card every adapter returns: what was read, in a few numbers people can check."""

from __future__ import annotations

from pathlib import Path

from shopguide.config import DataParams
from shopguide.duck import connect, sql_path


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
