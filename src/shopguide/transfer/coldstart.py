"""Cold-start initialisation: the embedding rows of the new categories, and of the items seen
only in them, start from what the pre-trained model learned on old categories instead of from
their random initialisation, and only those rows (with the task gates and towers) then adapt.

* a new category's row = the mean of the old categories' rows, each weighted by the number of
  distinct users exposed to both categories (all old categories by exposures when it shares
  no user with any);
* a new item's row = the mean of the rows of the old items its users were exposed to, each
  weighted by the number of those users (its own row when its users saw no old item).

A row that an old-category exposure also hashes to is left alone, so old categories keep
exactly their pre-trained embeddings."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from scipy import sparse

from shopguide.config import Params
from shopguide.model.base import Encoder, MultiTaskModel
from shopguide.transfer.common import Outcome, fine_tune
from shopguide.transfer.data import TransferData

KEYS = ("user_id", "item_id", "category_id")


def _key_rows(encoder: Encoder, keys: np.ndarray, column: int) -> np.ndarray:
    """Table rows that `keys` (ids of KEYS[column]) hash to."""
    ids = [torch.zeros(len(keys), dtype=torch.int64)] * 3
    ids[column] = torch.from_numpy(keys.astype(np.int64))
    return encoder.rows(*ids)[:, column].numpy()


def _weighted_mean(
    new_keys: np.ndarray,
    old_keys: np.ndarray,
    new_users: pd.DataFrame,
    old_users: pd.DataFrame,
    table: np.ndarray,
    old_rows: np.ndarray,
) -> np.ndarray:
    """(len(new_keys), dim): rows of `old_keys` averaged with weights = shared distinct users.
    `*_users` are frames of distinct (key, user_id); a key without shared users gets NaN."""
    users = pd.Index(pd.concat([new_users["user_id"], old_users["user_id"]]).unique())
    a = sparse.csr_matrix(
        (
            np.ones(len(new_users)),
            (
                pd.Index(new_keys).get_indexer(new_users["key"]),
                users.get_indexer(new_users["user_id"]),
            ),
        ),
        shape=(len(new_keys), len(users)),
    )
    b = sparse.csr_matrix(
        (
            np.ones(len(old_users)),
            (
                users.get_indexer(old_users["user_id"]),
                pd.Index(old_keys).get_indexer(old_users["key"]),
            ),
        ),
        shape=(len(users), len(old_keys)),
    )
    weights = a @ b  # shared users per (new key, old key)
    total = np.asarray(weights.sum(axis=1)).ravel()
    with np.errstate(invalid="ignore", divide="ignore"):
        return (weights @ table[old_rows]) / total[:, None]


def _distinct(frame: pd.DataFrame, key: str) -> pd.DataFrame:
    return frame[[key, "user_id"]].drop_duplicates().rename(columns={key: "key"})


def initial_rows(
    encoder: Encoder, old: pd.DataFrame, new: pd.DataFrame
) -> tuple[np.ndarray, np.ndarray]:
    """(rows, values): the table rows to overwrite and their cold-start values."""
    table = encoder.embedding.weight.detach().numpy()
    taken = np.concatenate([_key_rows(encoder, old[k].unique(), c) for c, k in enumerate(KEYS)])
    index, values = [], []
    for column, key in ((2, "category_id"), (1, "item_id")):
        new_keys, old_keys = new[key].unique(), old[key].unique()
        new_rows = _key_rows(encoder, new_keys, column)
        old_rows = _key_rows(encoder, old_keys, column)
        mean = _weighted_mean(
            new_keys, old_keys, _distinct(new, key), _distinct(old, key), table, old_rows
        )
        if column == 2:  # a category sharing no user: the exposure-weighted mean of all
            counts = old[key].value_counts().reindex(old_keys).to_numpy(np.float64)
            fallback = counts @ table[old_rows] / counts.sum()
            mean = np.where(np.isnan(mean), fallback, mean)
        # A new item none of whose users saw an old item keeps its row, but still adapts.
        mean = np.where(np.isnan(mean), table[new_rows], mean)
        keep = ~np.isin(new_rows, taken)
        index.append(new_rows[keep])
        values.append(mean[keep])
    rows, first = np.unique(np.concatenate(index), return_index=True)
    return rows, np.concatenate(values)[first].astype(np.float32)


def adapt(model: MultiTaskModel, data: TransferData, params: Params) -> Outcome:
    masks, hooks = [], []
    for encoder in model.encoders:
        rows, values = initial_rows(encoder, data.old, data.unlabelled)
        weight = encoder.embedding.weight
        with torch.no_grad():
            weight[torch.from_numpy(rows)] = torch.from_numpy(values)
        mask = torch.zeros(weight.shape[0], 1)
        mask[torch.from_numpy(rows)] = 1.0
        masks.append(mask)
        hooks.append(weight.register_hook(lambda g, m=mask: g * m.to(g.device)))
    shared = {id(p) for p in model.shared_parameters()}
    embeddings = {id(p) for p in model.embedding_parameters()}
    trainable = [p for p in model.parameters() if id(p) not in shared or id(p) in embeddings]
    try:
        outcome = fine_tune(
            model, data, params, trainable, params.finetune.learning_rate, "fine-tune (cold start)"
        )
    finally:
        for hook in hooks:
            hook.remove()
    outcome.trainable -= sum(int(m.numel() - m.sum()) * model.config.embedding_dim for m in masks)
    return outcome
