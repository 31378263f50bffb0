"""Online feature lookup for one request: the user, the candidate items and their categories."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from feast import FeatureStore

from shopguide.feature_spec import ITEM_ATTRIBUTES_VIEW, stat_features, stats_view


@dataclass(frozen=True)
class OnlineFeatures:
    dense: np.ndarray  # (items, features) in the model's dense feature order
    categories: np.ndarray  # (items,) int64, 0 where unknown
    user_known: bool
    item_known: np.ndarray  # (items,) bool


def _lookup(store: FeatureStore, view: str, key: str, ids: list[int],
            extra: list[str] = ()) -> dict[str, list]:
    refs = [f"{view}:{f}" for f in stat_features()] + list(extra)
    return store.get_online_features(
        features=refs, entity_rows=[{key: i} for i in ids], full_feature_names=True
    ).to_dict()


def fetch(store: FeatureStore, user_id: int, item_ids: list[int],
          dense_order: tuple[str, ...]) -> OnlineFeatures:
    user = _lookup(store, stats_view("user"), "user_id", [user_id])
    items = _lookup(store, stats_view("item"), "item_id", item_ids,
                    [f"{ITEM_ATTRIBUTES_VIEW}:category_id"])
    cat_raw = items[f"{ITEM_ATTRIBUTES_VIEW}__category_id"]
    item_known = np.array([c is not None for c in cat_raw])
    categories = np.array([c if c is not None else 0 for c in cat_raw], dtype=np.int64)
    unique = sorted(set(categories[item_known].tolist()))
    cats = _lookup(store, stats_view("category"), "category_id", unique) if unique else {}
    cat_index = {c: i for i, c in enumerate(unique)}
    n = len(item_ids)
    dense = np.zeros((n, len(dense_order)), np.float32)
    for j, name in enumerate(dense_order):
        if name in user:
            value = user[name][0]
            dense[:, j] = 0.0 if value is None else value
        elif name in items:
            dense[:, j] = [0.0 if v is None else v for v in items[name]]
        elif name in cats:
            col = cats[name]
            dense[:, j] = [
                (col[cat_index[c]] or 0.0) if known else 0.0
                for c, known in zip(categories.tolist(), item_known)
            ]
    user_known = any(v[0] is not None for k, v in user.items() if "__" in k)
    return OnlineFeatures(dense, categories, user_known, item_known)
