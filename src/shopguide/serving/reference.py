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
    PAIRS,
    SEQUENCE_VIEW,
    dense_inputs,
    pair_features,
    sequence_features,
    sequence_inputs,
    stat_features,
    stats_view,
)
from shopguide.model.base import MultiTaskModel
from shopguide.serving.features import CATEGORY_FEATURE, OnlineFeatures


def _online(store: FeatureStore, view: str, features: list[str], rows: list[dict]) -> dict:
    """{full feature name: values} of `rows` (entity dicts); None where absent."""
    refs = [f"{view}:{f}" for f in features]
    if not rows:
        return {ref.replace(":", "__"): [] for ref in refs}
    return store.get_online_features(
        features=refs, entity_rows=rows, full_feature_names=True
    ).to_dict()


def _column(values: list, integer: bool = False) -> np.ndarray:
    """Feast's values with None as NaN (floats) or 0 (integers)."""
    if integer:
        return np.array([0 if v is None else v for v in values], np.int64)
    return np.array([np.nan if v is None else v for v in values], np.float64)


def reference_features(
    store: FeatureStore,
    user_ids: np.ndarray,
    item_ids: np.ndarray,
    moments: np.ndarray,
    dense_order: tuple[str, ...],
    sequence_length: int = 0,
) -> OnlineFeatures:
    """The model inputs of rows (user_ids[i], item_ids[i]) at moments[i], assembled by feature
    name from `get_online_features`, one entity row per row: an unknown entity has null
    features, served as 0 (an age: never)."""
    users = [int(u) for u in user_ids]
    items = [int(i) for i in item_ids]
    attribute = _online(
        store, ITEM_ATTRIBUTES_VIEW, [CATEGORY_FEATURE], [{"item_id": i} for i in items]
    )[f"{ITEM_ATTRIBUTES_VIEW}__{CATEGORY_FEATURE}"]
    item_known = np.array([c is not None for c in attribute], bool)
    categories = np.array([c if c is not None else 0 for c in attribute], np.int64)
    ids = {"user_id": users, "item_id": items, "category_id": categories.tolist()}
    columns: dict[str, np.ndarray] = {}
    for entity, key in ENTITIES.items():
        view = stats_view(entity)
        rows = [{key: v} for v in ids[key]]
        columns |= {k: _column(v) for k, v in _online(store, view, stat_features(), rows).items()}
    for pair, keys in PAIRS.items():
        view = stats_view(pair)
        rows = [
            dict(zip(keys, values, strict=True))
            for values in zip(*(ids[k] for k in keys), strict=True)
        ]
        columns |= {k: _column(v) for k, v in _online(store, view, pair_features(), rows).items()}
    unknown_category = ~item_known
    for name in list(columns):
        if name.startswith((f"{stats_view('category')}__", f"{stats_view('user_category')}__")):
            columns[name][unknown_category] = np.nan  # an unknown item has no category
    user_known = ~np.isnan(columns[f"{stats_view('user')}__{stat_features()[0]}"])
    moments = np.asarray(moments, np.int64)
    sequence = np.zeros((len(items), 0, 4), np.int64)
    if sequence_length:
        names = sequence_features(sequence_length)
        found = _online(store, SEQUENCE_VIEW, names, [{"user_id": u} for u in users])
        columns |= {k: _column(v, integer=True) for k, v in found.items()}
        sequence = sequence_inputs(columns, moments, sequence_length)
    return OnlineFeatures(
        dense_inputs(columns, moments, dense_order),
        sequence,
        categories,
        user_known,
        item_known,
    )


@torch.inference_mode()
def reference_probabilities(
    model: MultiTaskModel,
    store: FeatureStore,
    user_ids: np.ndarray,
    item_ids: np.ndarray,
    moments: np.ndarray,
) -> np.ndarray:
    """(rows, tasks) probabilities of the model on `reference_features`."""
    model.eval()
    config = model.config
    feats = reference_features(
        store, user_ids, item_ids, moments, config.dense_features, config.sequence_length
    )
    logits = model(
        torch.from_numpy(np.asarray(user_ids, np.int64)),
        torch.from_numpy(np.asarray(item_ids, np.int64)),
        torch.from_numpy(feats.categories),
        torch.from_numpy(feats.dense),
        torch.from_numpy(feats.sequence),
    )
    return torch.sigmoid(logits.float()).numpy()
