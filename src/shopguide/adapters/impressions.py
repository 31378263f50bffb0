"""Impression-level datasets in torch-rechub's processed CSV format (AliExpress, Ali-CCP).

Each row is one exposure with its click and conversion labels; there are no timestamps, so the
row order of the train file is spread over the protocol's train period and that of the test file
(the train file's name with `train` replaced by `test`) over its test period. That keeps the
canonical split and the window checks meaningful. Events are derived: a `pv` per row, plus a
`click` / `buy` event at the same time for each positive label. The dataset's own feature columns
follow the canonical exposure columns, prefixed `x_`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from shopguide.adapters.card import data_card
from shopguide.config import Params
from shopguide.duck import connect, sql_path
from shopguide.errors import ShopguideError
from shopguide.ingest import require_file
from shopguide.io import atomic_path

log = logging.getLogger(__name__)

BEHAVIOURS: tuple[str, ...] = ("pv", "click", "buy")
TASK_OF_BEHAVIOUR = {"click": "click", "buy": "buy"}


def test_file(train: Path) -> Path:
    if "train" not in train.name:
        raise ShopguideError(f"{train}: expected the train CSV (a name containing 'train')")
    return train.with_name(train.name.replace("train", "test"))


def ingest_impressions(
    adapter: str,
    source: Path,
    events: Path,
    exposures: Path,
    params: Params,
    ids: dict[str, str],
    labels: dict[str, str],
) -> dict:
    """`ids` maps canonical user_id/item_id/category_id to SQL over the CSV's columns; `labels`
    maps the tasks click and buy to the CSV's label columns."""
    protocol = params.protocol
    missing = set(protocol.tasks) - set(labels)
    if missing:
        raise ShopguideError(
            f"protocol.tasks {sorted(missing)} have no labels in {adapter}; it has {list(labels)}"
        )
    files = {"train": require_file(source, f"{adapter} rows"), "test": test_file(Path(source))}
    require_file(files["test"], f"{adapter} rows")
    con = connect(params.data)
    periods = {
        "train": (protocol.window_start, protocol.test_start),
        "test": (protocol.test_start, protocol.window_end),
    }
    parts = []
    for split, path in files.items():
        header = [
            r[0]
            for r in con.execute(
                f"DESCRIBE SELECT * FROM read_csv({sql_path(path)}, header = true)"
            ).fetchall()
        ]
        absent = sorted(set(labels.values()) - set(header))
        if absent:
            raise ShopguideError(f"{path}: missing label columns {absent}; header {header[:8]}...")
        start, end = periods[split]
        (n,) = con.execute(
            f"SELECT count(*) FROM read_csv({sql_path(path)}, header = true)"
        ).fetchone()
        if n == 0:
            raise ShopguideError(f"{path}: no data rows")
        features = ", ".join(f'"{c}" AS "x_{c}"' for c in header if c not in labels.values())
        parts.append(
            f"""SELECT {ids["user_id"]}::BIGINT AS user_id, {ids["item_id"]}::BIGINT AS item_id,
                       {ids["category_id"]}::BIGINT AS category_id,
                       ({start} + (row_number() OVER () - 1) * {(end - start) / n})::BIGINT AS t0,
                       {", ".join(f'"{labels[t]}"::TINYINT AS {t}' for t in protocol.tasks)},
                       '{split}' AS split, {features}
                FROM read_csv({sql_path(path)}, header = true)"""
        )
    with atomic_path(exposures) as tmp:
        try:
            con.execute(f"COPY ({' UNION ALL '.join(parts)}) TO {sql_path(tmp)} (FORMAT parquet)")
        except Exception as exc:  # DuckDB conversion errors name the column and value
            raise ShopguideError(f"{source}: cannot read {adapter} rows: {exc}") from exc
        x = f"read_parquet({sql_path(tmp)})"
        label_events = " UNION ALL ".join(
            f"SELECT user_id, item_id, category_id, '{b}', t0 FROM {x} WHERE {t} = 1"
            for b, t in TASK_OF_BEHAVIOUR.items()
            if t in protocol.tasks
        )
        with atomic_path(events) as ev:
            con.execute(
                f"""COPY (
                    SELECT user_id, item_id, category_id, 'pv' AS behavior, t0 AS ts FROM {x}
                    UNION ALL {label_events}
                ) TO {sql_path(ev)} (FORMAT parquet, COMPRESSION zstd)"""
            )
    log.info("%s: exposures from %s and %s", adapter, files["train"], files["test"])
    return data_card(
        adapter,
        source,
        events,
        exposures,
        protocol.tasks,
        params.data,
        test_source=str(files["test"]),
    )
