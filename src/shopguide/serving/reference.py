"""Reference scores for parity checks: features through Feast's public
`FeatureStore.get_online_features` (slow, but the API every Feast user relies on) and the model
applied in-process. The gate and the tests compare what the server answers with these."""

from __future__ import annotations

import numpy as np
import torch
from feast import FeatureStore

from shopguide.feature_spec import (
    ENTITIES,
    ITEM_ATTRIBUTES_VIEW,
    stat_features,
    stats_view,
)
from shopguide.model.base import MultiTaskModel
from shopguide.serving.features import CATEGORY_FEATURE, OnlineFeatures


def _online(store: FeatureStore, refs: list[str], key: str, ids: np.ndarray) -> dict[str, list]:
    if not len(ids):
        return {ref.replace(":", "__"): [] for ref in refs}
    return store.get_online_features(
        features=refs, entity_rows=[{key: int(i)} for i in ids], full_feature_names=True
    ).to_dict()


def reference_features(
    store: FeatureStore, user_ids: np.ndarray, item_ids: np.ndarray, dense_order: tuple[str, ...]
) -> OnlineFeatures:
    """The model inputs of rows (user_ids[i], item_ids[i]), assembled by feature name from
    `get_online_features`: an unknown entity has all-null features, served as 0."""
    users, user_row = np.unique(user_ids, return_inverse=True)
    items, item_row = np.unique(item_ids, return_inverse=True)
    category_ref = f"{ITEM_ATTRIBUTES_VIEW}:{CATEGORY_FEATURE}"
    item_categories = _online(store, [category_ref], ENTITIES["item"], items)[
        category_ref.replace(":", "__")
    ]
    item_known = np.array([c is not None for c in item_categories], bool)
    categories = np.array([c if c is not None else 0 for c in item_categories], np.int64)
    known_categories = np.unique(categories[item_known])
    values: dict[str, dict[int, list]] = {}
    for entity, ids in (("user", users), ("item", items), ("category", known_categories)):
        view = stats_view(entity)
        refs = [f"{view}:{f}" for f in stat_features()]
        table = _online(store, refs, ENTITIES[entity], ids)
        values[view] = {
            int(i): [table[f"{view}__{f}"][k] for f in stat_features()] for k, i in enumerate(ids)
        }
    position = {f: k for k, f in enumerate(stat_features())}
    rows, user_known = [], []
    for u, it in zip(users[user_row], item_row, strict=True):
        row_values = {
            stats_view("user"): values[stats_view("user")][int(u)],
            stats_view("item"): values[stats_view("item")][int(items[it])],
            stats_view("category"): values[stats_view("category")].get(
                int(categories[it]) if item_known[it] else -1, [None] * len(position)
            ),
        }
        rows.append(
            [
                row_values[name.partition("__")[0]][position[name.partition("__")[2]]] or 0.0
                for name in dense_order
            ]
        )
        user_known.append(any(v is not None for v in row_values[stats_view("user")]))
    return OnlineFeatures(
        np.array(rows, np.float32).reshape(len(item_ids), len(dense_order)),
        categories[item_row],
        np.array(user_known, bool),
        item_known[item_row],
    )


@torch.inference_mode()
def reference_probabilities(
    model: MultiTaskModel, store: FeatureStore, user_ids: np.ndarray, item_ids: np.ndarray
) -> np.ndarray:
    """(rows, tasks) probabilities of the model on `reference_features`."""
    model.eval()
    feats = reference_features(store, user_ids, item_ids, model.config.dense_features)
    logits = model(
        torch.from_numpy(np.asarray(user_ids, np.int64)),
        torch.from_numpy(np.asarray(item_ids, np.int64)),
        torch.from_numpy(feats.categories),
        torch.from_numpy(feats.dense),
    )
    return torch.sigmoid(logits.float()).numpy()
