"""The ranking losses by hand: the listwise loss ranks within a group only, and the rows of a
ranking query teach no pointwise loss (they are chosen for their outcome); the epoch is picked
by the ranking within each user-moment."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch

from shopguide.metrics import task_metrics
from shopguide.model.tasks import listwise_losses, task_losses
from shopguide.model.tensors import moment_groups, pointwise_rows


def test_listwise_loss_is_the_softmax_cross_entropy_of_each_group() -> None:
    logits = torch.tensor([[2.0], [0.0], [1.0], [5.0], [3.0]])
    labels = torch.tensor([[1.0], [0.0], [float("nan")], [0.0], [0.0]])
    group = torch.tensor([0, 0, 0, 1, 1])
    loss = listwise_losses(logits, labels, group)
    # group 0: the NaN row takes no part; group 1 has no positive and is not judged
    expected = -math.log(math.exp(2.0) / (math.exp(2.0) + math.exp(0.0)))
    assert loss.shape == (1,)
    assert math.isclose(float(loss[0]), expected, rel_tol=1e-6)
    shifted = logits + torch.tensor([[10.0], [10.0], [10.0], [-4.0], [-4.0]])
    assert math.isclose(float(listwise_losses(shifted, labels, group)[0]), expected, rel_tol=1e-5)


def test_rows_of_a_ranking_query_take_no_part_in_the_pointwise_loss() -> None:
    logits = torch.tensor([[3.0], [-1.0], [0.5]])
    labels = torch.tensor([[1.0], [0.0], [1.0]])
    every = task_losses(logits, labels, 1, ())
    masked = task_losses(logits, labels, 1, (), torch.tensor([True, True, False]))
    alone = task_losses(logits[:2], labels[:2], 1, ())
    assert torch.allclose(masked, alone) and not torch.allclose(masked, every)


def test_query_rows_are_marked_and_groups_follow_the_window() -> None:
    frame = pd.DataFrame(
        {
            "user_id": [1, 1, 1, 2, 1],
            "t0": [100, 100, 90_000, 100, 200],
            "ranking_query": [False, True, False, False, False],
        }
    )
    assert pointwise_rows(frame).tolist() == [True, False, True, True, True]
    assert pointwise_rows(frame.drop(columns="ranking_query")).all()
    # a ranking query is a group of its own, apart from the exposures of the same moment
    moments = moment_groups(frame)
    assert len(np.unique(moments)) == 5
    days = moment_groups(frame, 86400)
    assert days[0] == days[4] != days[1]
    assert len(np.unique(days)) == 4


def test_moment_auc_ranks_within_each_user_moment_only() -> None:
    # pooled, the second moment's higher scores rank its negative above the first's positive;
    # within each moment the positive is on top
    labels = np.array([[1.0], [0.0], [1.0], [0.0], [np.nan]])
    probs = np.array([[0.3], [0.1], [0.9], [0.5], [0.0]])
    moments = np.array([0, 0, 1, 1, 1])
    metrics = task_metrics(labels, probs, ("cart",), moments=moments)["cart"]
    assert metrics["moment_auc"] == 1.0
    assert metrics["auc"] == 0.75
    assert "gauc" not in metrics
