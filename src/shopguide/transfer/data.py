"""The rows a transfer strategy sees (protocol taobao-transfer-v1): labelled new-category rows
to learn from and to validate on, every new-category train exposure without its labels, and the
old categories' train exposures the model was pre-trained on."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from shopguide.config import Params
from shopguide.errors import ShopguideError
from shopguide.model.tensors import is_new_category, new_category_rule, time_split

MIN_LABELLED = 50
_HASH = 2654435761


@dataclass(frozen=True)
class TransferData:
    fit: pd.DataFrame  # labelled new-category rows the model learns from
    valid: pd.DataFrame  # the latest labelled new-category rows: early stopping and `auto`
    unlabelled: pd.DataFrame  # every new-category train exposure, labels unused
    old: pd.DataFrame  # old categories' train exposures (the pre-training data)
    old_valid: pd.DataFrame  # their latest rows (pre-training's validation slice): forgetting


def user_budget(frame: pd.DataFrame, fraction: float) -> pd.DataFrame:
    """The rows of a deterministic `fraction` of the users (by a hash of user_id), so a smaller
    budget is a subset of a larger one and a user's exposures are kept or dropped together."""
    if fraction >= 1.0:
        return frame
    bucket = (frame["user_id"].to_numpy(np.uint64) * np.uint64(_HASH)) % np.uint64(2**32)
    return frame[bucket.astype(np.float64) / 2**32 < fraction]


def transfer_data(frame: pd.DataFrame, params: Params, budget: float = 1.0) -> TransferData:
    """Split a training set for fine-tuning; `budget` keeps that share of the new categories'
    labelled train exposures (by user), the rest stays available unlabelled."""
    train = frame[frame["split"] == "train"]
    new = is_new_category(train["category_id"], params.finetune)
    labelled = user_budget(train[new], budget)
    if len(labelled) < MIN_LABELLED:
        raise ShopguideError(
            f"only {len(labelled)} labelled training exposures in new categories "
            f"({new_category_rule(params.finetune)}, budget {budget:g}); need >= {MIN_LABELLED}"
        )
    fit_part, valid_part = time_split(labelled, params.train.validation_fraction)
    old = train[~new]
    old_valid = time_split(old, params.train.validation_fraction)[1]
    return TransferData(fit_part, valid_part, train[new], old, old_valid)
