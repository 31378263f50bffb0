"""Online feature lookup for a batch of (user, candidate item) rows.

Each entity type is read from Feast once per batch, for its distinct ids only; the rows then
gather their values by index, so cost grows with distinct entities, not with rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from feast import FeatureStore

from shopguide.errors import ShopguideError
from shopguide.feature_spec import (
    ENTITIES,
    ITEM_ATTRIBUTES_VIEW,
    model_feature_columns,
    stat_features,
    stats_view,
)

CATEGORY_REF = f"{ITEM_ATTRIBUTES_VIEW}:category_id"


@dataclass(frozen=True)
class OnlineFeatures:
    dense: np.ndarray  # (rows, features) float32 in the model's dense feature order, 0 if absent
    categories: np.ndarray  # (rows,) int64, 0 where the item is unknown
    user_known: np.ndarray  # (rows,) bool
    item_known: np.ndarray  # (rows,) bool


def check_dense_order(dense_order: tuple[str, ...]) -> None:
    """Fail at load, not per request, when the model wants a feature this lookup never reads
    (it would otherwise be served as a silent 0)."""
    unknown = sorted(set(dense_order) - set(model_feature_columns()))
    if unknown:
        raise ShopguideError(f"the model needs features the online lookup does not read: {unknown}")


def _read(
    store: FeatureStore, entity: str, ids: np.ndarray, extra: tuple[str, ...] = ()
) -> dict[str, list]:
    """One online read of `entity`'s stats (and `extra` refs) for `ids`; None where absent."""
    refs = [f"{stats_view(entity)}:{f}" for f in stat_features()] + list(extra)
    if not len(ids):
        return {ref.replace(":", "__"): [] for ref in refs}
    key = ENTITIES[entity]
    return store.get_online_features(
        features=refs, entity_rows=[{key: int(i)} for i in ids], full_feature_names=True
    ).to_dict()


def _table(entity: str, values: dict[str, list]) -> np.ndarray:
    """(ids + 1, stats) float32 with NaN where absent; the extra last row is all NaN, the
    target of rows that have no such entity."""
    view = stats_view(entity)
    columns = [np.asarray(values[f"{view}__{f}"], dtype=np.float32) for f in stat_features()]
    table = np.stack(columns, axis=1)
    return np.vstack([table, np.full((1, table.shape[1]), np.nan, np.float32)])


def fetch(
    store: FeatureStore, user_ids: np.ndarray, item_ids: np.ndarray, dense_order: tuple[str, ...]
) -> OnlineFeatures:
    """Latest features of every row (user_ids[i], item_ids[i]), in three batched reads:
    users, items with their category, then the categories of the known items."""
    users, user_row = np.unique(user_ids, return_inverse=True)
    items, item_row = np.unique(item_ids, return_inverse=True)
    user_values = _read(store, "user", users)
    item_values = _read(store, "item", items, (CATEGORY_REF,))
    raw_categories = item_values[CATEGORY_REF.replace(":", "__")]
    item_known = np.array([c is not None for c in raw_categories])
    item_category = np.array([c or 0 for c in raw_categories], dtype=np.int64)
    categories, category_of_known = np.unique(item_category[item_known], return_inverse=True)
    category_row = np.full(len(items), len(categories))  # unknown items -> the NaN row
    category_row[item_known] = category_of_known
    tables = {
        stats_view("user"): _table("user", user_values)[user_row],
        stats_view("item"): _table("item", item_values)[item_row],
        stats_view("category"): _table("category", _read(store, "category", categories))[
            category_row[item_row]
        ],
    }
    position = {f: k for k, f in enumerate(stat_features())}
    dense = np.empty((len(item_ids), len(dense_order)), np.float32)
    for j, name in enumerate(dense_order):
        view, _, feature = name.partition("__")
        dense[:, j] = tables[view][:, position[feature]]
    np.nan_to_num(dense, copy=False, nan=0.0)
    user_known = ~np.isnan(tables[stats_view("user")]).all(axis=1)
    return OnlineFeatures(dense, item_category[item_row], user_known, item_known[item_row])
