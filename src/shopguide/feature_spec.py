"""The point-in-time features: the one description shared by the Feast repo, the feature builder,
the training-set join, the model and the predictor.

Feature views, each built from events strictly before its snapshot time:

* `<entity>_stats` for user, item and category: behaviour counts over trailing windows and all
  history, and conversion rates (`shopguide.snapshots`).
* `<pair>_stats` for user x item and user x category: the pair's count of each behaviour and the
  time of its last such event (`shopguide.history.pair_table`). What the user did with this
  very item or category, and how long ago, is what ranks one user's candidates.
* `user_sequence`: the user's last `features.sequence_length` events, most recent first: item,
  category, behaviour code and time (`shopguide.history.sequence_table`).

Times are stored as epoch seconds (Int64). The model reads ages instead: the moment it scores
at minus the stored time (`dense_inputs`, `sequence_inputs`), computed the same way from the
training set (moment t0) and from the online store (the request's moment).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from shopguide.config import BEHAVIOURS

# Trailing windows over which behaviour is counted; "all" is everything before the snapshot.
WINDOW_HOURS: tuple[int, ...] = (24, 72)
RATE_TASKS: tuple[str, ...] = ("cart", "fav", "buy")
ENTITIES: dict[str, str] = {"user": "user_id", "item": "item_id", "category": "category_id"}
PAIRS: dict[str, tuple[str, str]] = {
    "user_item": ("user_id", "item_id"),
    "user_category": ("user_id", "category_id"),
}
SEQUENCE_VIEW = "user_sequence"
SEQUENCE_FIELDS: tuple[str, ...] = ("item", "category", "behavior", "ts")
FEATURE_SERVICE = "shopguide_model"
# Written by the features step beside the tables: the sequence length the Feast repo declares.
SPEC_FILE = "spec.json"
ITEM_ATTRIBUTES_VIEW = "item_attributes"
AGE_SUFFIX = "_age_s"
LAST_TS_SUFFIX = "_last_ts"
# The age of something that never happened: ten years, far beyond any real age in the data.
NEVER_AGE_S = 10 * 365 * 86400
# Behaviour codes in the sequence: 0 is an empty slot; behaviours other than the canonical
# ones share the last code.
BEHAVIOUR_CODES: dict[str, int] = {b: i + 1 for i, b in enumerate(BEHAVIOURS)}
OTHER_BEHAVIOUR_CODE = len(BEHAVIOURS) + 1


def window_names() -> list[str]:
    return [f"{h}h" for h in WINDOW_HOURS] + ["all"]


def count_features() -> list[str]:
    return [f"{b}_{w}" for w in window_names() for b in BEHAVIOURS]


def rate_features() -> list[str]:
    """Conversion rates per view over the longest window and all history."""
    return [f"{t}_rate_{w}" for w in window_names()[-2:] for t in RATE_TASKS]


def stat_features() -> list[str]:
    return count_features() + rate_features()


def stats_view(entity: str) -> str:
    return f"{entity}_stats"


def pair_count_features() -> list[str]:
    return [f"{b}_count" for b in BEHAVIOURS]


def pair_time_features() -> list[str]:
    return [f"{b}{LAST_TS_SUFFIX}" for b in BEHAVIOURS]


def pair_features() -> list[str]:
    return pair_count_features() + pair_time_features()


def sequence_features(length: int) -> list[str]:
    """`<field>_<k>` for slot k = 0 (the most recent event) to length - 1."""
    return [f"{field}_{k}" for k in range(length) for field in SEQUENCE_FIELDS]


@dataclass(frozen=True)
class ViewSpec:
    """A feature view of the model's feature service: the `features.snapshot_interval_s` entry
    of its grain, its join keys (the first one decides the hash passes of its table), its float
    and its integer features."""

    name: str
    grain: str
    keys: tuple[str, ...]
    floats: tuple[str, ...]
    ints: tuple[str, ...] = ()

    @property
    def features(self) -> tuple[str, ...]:
        return self.floats + self.ints


def pass_key(keys: tuple[str, ...]) -> str:
    """The key whose hash splits a view's table into passes: the user where the view has
    one (every row of a user, and of each of their pairs, in one pass), else its only key."""
    return "user_id" if "user_id" in keys else keys[0]


def feature_views(sequence_length: int) -> list[ViewSpec]:
    """The views of the feature service, in the order the training set holds them."""
    views = [ViewSpec(stats_view(e), e, (k,), tuple(stat_features())) for e, k in ENTITIES.items()]
    views += [
        ViewSpec(stats_view(p), p, keys, tuple(pair_count_features()), tuple(pair_time_features()))
        for p, keys in PAIRS.items()
    ]
    views.append(
        ViewSpec(
            SEQUENCE_VIEW,
            SEQUENCE_VIEW,
            ("user_id",),
            (),
            tuple(sequence_features(sequence_length)),
        )
    )
    return views


def model_feature_columns() -> list[str]:
    """The model's dense inputs (training-set column names, Feast full feature names; ages
    derived from the `_last_ts` columns), in order."""
    stats = [f"{stats_view(e)}__{f}" for e in ENTITIES for f in stat_features()]
    pairs = [
        f"{stats_view(p)}__{f}"
        for p in PAIRS
        for f in pair_count_features()
        + [t.removesuffix(LAST_TS_SUFFIX) + AGE_SUFFIX for t in pair_time_features()]
    ]
    return stats + pairs


def source_column(dense: str) -> str:
    """The training-set (Feast) column a dense input is computed from."""
    if dense.endswith(AGE_SUFFIX):
        return dense.removesuffix(AGE_SUFFIX) + LAST_TS_SUFFIX
    return dense


def ages(last: np.ndarray, moments: np.ndarray) -> np.ndarray:
    """Seconds from each stored time to its moment; NEVER_AGE_S where nothing happened (0)."""
    last = np.asarray(last, np.int64)
    return np.where(last > 0, moments - last, NEVER_AGE_S)


def dense_inputs(
    columns: Mapping[str, np.ndarray], moments: np.ndarray, names: tuple[str, ...]
) -> np.ndarray:
    """(rows, len(names)) float32 model inputs from raw feature columns (absent values as NaN
    or 0) at each row's moment (epoch seconds)."""
    out = np.empty((len(moments), len(names)), np.float32)
    for j, name in enumerate(names):
        raw = columns[source_column(name)]
        if name.endswith(AGE_SUFFIX):
            raw = ages(np.nan_to_num(np.asarray(raw, np.float64), nan=0.0), moments)
        out[:, j] = np.nan_to_num(np.asarray(raw, np.float64), nan=0.0)
    return out


def sequence_inputs(
    columns: Mapping[str, np.ndarray], moments: np.ndarray, length: int
) -> np.ndarray:
    """(rows, length, 4) int64: per slot the item, category, behaviour code (0: empty slot)
    and age in seconds at the row's moment, from the `user_sequence` columns."""
    names = [f"{SEQUENCE_VIEW}__{field}_{k}" for k in range(length) for field in SEQUENCE_FIELDS]
    if not names:
        return np.zeros((len(moments), 0, 4), np.int64)
    if isinstance(columns, pd.DataFrame):  # one copy out of the table's int64 block
        flat = columns[names].to_numpy(np.int64)
    else:
        flat = np.column_stack([np.asarray(columns[c], np.int64) for c in names])
    out = flat.reshape(len(moments), length, 4)
    out[:, :, 3] = np.where(out[:, :, 2] > 0, moments[:, None] - out[:, :, 3], 0)
    return out
