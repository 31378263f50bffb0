"""Whole-table tensors: the training set is held as a few contiguous tensors and batched by
index, so there is no per-row Python anywhere on the data path."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from shopguide.config import FinetuneParams
from shopguide.errors import ShopguideError
from shopguide.feature_spec import (
    SEQUENCE_VIEW,
    dense_inputs,
    sequence_features,
    sequence_inputs,
    source_column,
)
from shopguide.model.base import ModelConfig

KEYS = ("user_id", "item_id", "category_id")


@dataclass(frozen=True)
class Tensors:
    user: torch.Tensor
    item: torch.Tensor
    category: torch.Tensor
    dense: torch.Tensor
    sequence: torch.Tensor  # (rows, length, 4) int64; length 0 for a model without one
    labels: torch.Tensor  # (rows, tasks) float32, NaN where a row's label is unknown
    group: torch.Tensor  # (rows,) int64: rows of one user at one moment share a group
    # (rows,) bool: whether the pointwise loss learns from the row; a ranking query's rows are
    # chosen because one of them was acted on, so only the ranking within them is a label
    pointwise: torch.Tensor
    # A declared dataset's fields (shopguide.dataset.inputs): (rows, fields) int64 embedding
    # rows and (rows, bags, tokens) int64 token bags; 0 columns for the event-log datasets.
    codes: torch.Tensor
    bags: torch.Tensor

    @classmethod
    def of(
        cls,
        frame: pd.DataFrame,
        dense: np.ndarray,
        labels: np.ndarray,
        group: np.ndarray,
        sequence: np.ndarray | None = None,
        pointwise: np.ndarray | None = None,
        codes: np.ndarray | None = None,
        bags: np.ndarray | None = None,
    ) -> Tensors:
        """The tensors of `frame`'s rows: ids from its user_id, item_id and category_id
        columns; the inputs a dataset lacks (sequence, fields, bags) empty, every row
        pointwise unless said otherwise."""
        rows = len(frame)
        return cls(
            user=torch.from_numpy(frame["user_id"].to_numpy(np.int64)),
            item=torch.from_numpy(frame["item_id"].to_numpy(np.int64)),
            category=torch.from_numpy(frame["category_id"].to_numpy(np.int64)),
            dense=torch.from_numpy(dense),
            sequence=torch.from_numpy(
                np.zeros((rows, 0, 4), np.int64) if sequence is None else sequence
            ),
            labels=torch.from_numpy(labels),
            group=torch.from_numpy(group),
            pointwise=torch.from_numpy(np.ones(rows, bool) if pointwise is None else pointwise),
            codes=torch.from_numpy(np.zeros((rows, 0), np.int64) if codes is None else codes),
            bags=torch.from_numpy(np.zeros((rows, 0, 0), np.int64) if bags is None else bags),
        )

    def __len__(self) -> int:
        return self.user.shape[0]

    def take(self, index: torch.Tensor) -> Tensors:
        return Tensors(*(t[index] for t in vars(self).values()))

    def rows(self, part: slice) -> Tensors:
        """A view of the rows in `part` (no copy)."""
        return Tensors(*(t[part] for t in vars(self).values()))

    def to(self, device: torch.device | str) -> Tensors:
        """The same rows on `device` (these tensors themselves when already there)."""
        if self.user.device == torch.device(device):
            return self
        return Tensors(*(t.to(device, non_blocking=True) for t in vars(self).values()))

    def inputs(self) -> tuple[torch.Tensor, ...]:
        return self.user, self.item, self.category, self.dense, self.sequence, self.codes, self.bags


def read_training_set(path: Path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise ShopguideError(f"{path}: training set not found (run `shopguide features` first)")
    return pd.read_parquet(path)


def input_columns(config: ModelConfig) -> list[str]:
    """The training-set columns the model's inputs are computed from."""
    sequence = [f"{SEQUENCE_VIEW}__{f}" for f in sequence_features(config.sequence_length)]
    return [*KEYS, "t0", *dict.fromkeys(map(source_column, config.dense_features)), *sequence]


def to_tensors(
    frame: pd.DataFrame, tasks: tuple[str, ...], config: ModelConfig, group_s: int = 0
) -> Tensors:
    """The model's inputs (at each row's moment t0) and the `tasks`' labels of `frame`; rows
    are grouped by user and moment, or with `group_s` by user and `group_s`-second window."""
    missing = [c for c in (*input_columns(config), *tasks) if c not in frame.columns]
    if missing:  # a label column filled in would score (and gate) against nothing
        raise ShopguideError(f"training set lacks columns {missing}")
    labels = frame[list(tasks)].to_numpy(np.float32)
    moments = frame["t0"].to_numpy(np.int64)
    return Tensors.of(
        frame,
        dense=dense_inputs(frame, moments, config.dense_features),
        labels=labels,
        group=moment_groups(frame, group_s),
        sequence=sequence_inputs(frame, moments, config.sequence_length),
        pointwise=pointwise_rows(frame),
    )


def pointwise_rows(frame: pd.DataFrame) -> np.ndarray:
    """(rows,) bool: False for the rows of ranking queries (`ranking_query`), which are
    selected on their outcome: a pointwise loss on them would learn the selection."""
    if "ranking_query" not in frame.columns:
        return np.ones(len(frame), bool)
    return ~frame["ranking_query"].to_numpy(bool)


def moment_groups(frame: pd.DataFrame, window_s: int = 0) -> np.ndarray:
    """(rows,) int64: one group per (user, moment t0), the candidates ranked together; with
    `window_s`, per user and window of that many seconds (the user's rows of several moments
    ranked together, as GAUC ranks a user's exposures). A ranking query's rows form groups of
    their own, apart from exposures of the same user and moment. Ids number the keys in sorted
    order."""
    moments = frame["t0"].to_numpy(np.int64)
    keys = pd.DataFrame(
        {
            "user": frame["user_id"].to_numpy(np.int64),
            "moment": moments // window_s if window_s else moments,
            "query": ~pointwise_rows(frame),
        }
    )
    return keys.groupby(list(keys.columns), sort=True).ngroup().to_numpy(np.int64)


def exposures_of(frame: pd.DataFrame) -> np.ndarray:
    """(rows,) bool: the real exposures, not the items sampled beside them."""
    if "sampled" not in frame.columns:
        return np.ones(len(frame), bool)
    return ~frame["sampled"].to_numpy(bool)


def is_new_category(category_id: pd.Series, params: FinetuneParams) -> pd.Series:
    """Protocol taobao-transfer-v1: a category is new when id % modulo == remainder, unless
    `new_category_ids` names the new categories explicitly."""
    if params.new_category_ids:
        return category_id.isin(params.new_category_ids)
    return category_id % params.new_category_modulo == params.new_category_remainder


def rule_text(ids: Sequence[int] | None, modulo: object, remainder: object) -> str:
    """A category rule in words (`ids` when given, else id % modulo == remainder)."""
    if ids:
        return f"category_id in {list(ids)}"
    return f"category_id % {modulo} == {remainder}"


def new_category_rule(params: FinetuneParams) -> str:
    """`is_new_category`'s rule in words, for messages."""
    return rule_text(
        params.new_category_ids, params.new_category_modulo, params.new_category_remainder
    )


def time_split(frame: pd.DataFrame, fraction: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The last `fraction` of rows by t0 become the validation slice (no look-ahead)."""
    frame = frame.sort_values("t0", kind="stable")
    cut = int(len(frame) * (1 - fraction))
    return frame.iloc[:cut], frame.iloc[cut:]
