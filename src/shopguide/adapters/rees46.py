"""REES46 "eCommerce behavior data from multi category store" CSV -> canonical tables.

Header `event_time,event_type,product_id,category_id,category_code,brand,price,user_id,
user_session`. view/cart/purchase become pv/cart/buy; remove_from_cart is neither an exposure
nor a label and is counted in the data card, not kept. Any other event_type is passed through so
validation reports it as an unknown behaviour rather than the adapter hiding it. Exposure = first
view of a product by a user (the same rule as Taobao); brand, price and the category_code levels
become item features in `item_features.parquet` next to the events (latest value per product).
Real files hold a few exact duplicate events: `data.drop_duplicate_events` drops them (counted
on the data card), else validation judges them (`validation.max_duplicate_fraction`).
"""

from __future__ import annotations

import logging
from pathlib import Path

from shopguide.adapters.card import data_card, time_split_check
from shopguide.config import Params
from shopguide.duck import connect, sql_path
from shopguide.errors import ShopguideError
from shopguide.exposures import build_exposures
from shopguide.ingest import check_rejects, copy_csv, drop_duplicates, require_file
from shopguide.io import atomic_path

log = logging.getLogger(__name__)

BEHAVIOURS: tuple[str, ...] = ("pv", "cart", "buy")
COLUMNS = {
    "event_time": "VARCHAR",
    "event_type": "VARCHAR",
    "product_id": "BIGINT",
    "category_id": "BIGINT",
    "category_code": "VARCHAR",
    "brand": "VARCHAR",
    "price": "DOUBLE",
    "user_id": "BIGINT",
    "user_session": "VARCHAR",
}
TIME_FORMAT = "%Y-%m-%d %H:%M:%S UTC"
CATEGORY_LEVELS = 3


def item_features_path(events: Path) -> Path:
    return Path(events).with_name("item_features.parquet")


def ingest(source: Path, events: Path, exposures: Path, params: Params) -> dict:
    expected = "REES46 rows with header " + ",".join(COLUMNS)
    source = require_file(source, expected)
    con = connect(params.data)
    columns = "{" + ", ".join(f"'{k}': '{v}'" for k, v in COLUMNS.items()) + "}"
    behaviour = (
        "CASE event_type WHEN 'view' THEN 'pv' WHEN 'purchase' THEN 'buy' ELSE event_type END"
    )
    levels = ", ".join(
        f"nullif(split_part(category_code, '.', {i + 1}), '') AS category_l{i + 1}"
        for i in range(CATEGORY_LEVELS)
    )
    with atomic_path(events) as tmp:

        def copy(csv: Path, raw: Path) -> None:
            con.execute(
                f"""COPY (
                    SELECT *, epoch(try_strptime(event_time, '{TIME_FORMAT}'))::BIGINT AS ts
                    FROM read_csv({sql_path(csv)}, header = true, delim = ',', quote = '"',
                        auto_detect = false, columns = {columns}, store_rejects = true,
                        null_padding = false)
                ) TO {sql_path(raw)} (FORMAT parquet)"""
            )

        # One pass over the CSV into a staged Parquet that every later query reads.
        raw = copy_csv(source, tmp.with_name("raw.parquet"), copy, expected)
        raw_sql = f"read_parquet({sql_path(raw)})"
        rows, removed, bad_time = con.execute(
            f"""SELECT count(*), count(*) FILTER (WHERE event_type = 'remove_from_cart'),
                       count(*) FILTER (WHERE ts IS NULL) FROM {raw_sql}"""
        ).fetchone()
        bad, _ = check_rejects(con, source, rows, "REES46 header and 9 columns", params.data)
        if bad_time:
            (example,) = con.execute(
                f"SELECT event_time FROM {raw_sql} WHERE ts IS NULL LIMIT 1"
            ).fetchone()
            raise ShopguideError(
                f"{source}: {bad_time} rows have an event_time not like "
                f"'2019-10-01 00:00:04 UTC', e.g. {example!r}"
            )
        kept = tmp.with_name("kept.parquet") if params.data.drop_duplicate_events else tmp
        con.execute(
            f"""COPY (
                SELECT user_id, product_id AS item_id, category_id, {behaviour} AS behavior, ts
                FROM {raw_sql} WHERE event_type IS DISTINCT FROM 'remove_from_cart'
            ) TO {sql_path(kept)} (FORMAT parquet, COMPRESSION zstd)"""
        )
        duplicates = drop_duplicates(con, kept, tmp, rows - removed) if kept != tmp else 0
        with atomic_path(item_features_path(events)) as items:
            con.execute(
                f"""COPY (
                    SELECT item_id, brand, price, category_code, {levels} FROM (
                        SELECT product_id AS item_id, arg_max(brand, ts) AS brand,
                               arg_max(price, ts) AS price,
                               arg_max(category_code, ts) AS category_code
                        FROM {raw_sql} GROUP BY product_id)
                ) TO {sql_path(items)} (FORMAT parquet)"""
            )
    build_exposures(events, exposures, params)
    log.info("rees46: %d rows (%d remove_from_cart dropped) from %s", rows, removed, source)
    return data_card(
        "rees46",
        source,
        events,
        exposures,
        params.protocol.tasks,
        params.data,
        malformed_rows=bad,
        remove_from_cart_rows=removed,
        **time_split_check(events, exposures, params),
        duplicate_events_dropped=duplicates,
        item_features=str(item_features_path(events)),
    )
