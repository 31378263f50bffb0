"""The ranking losses by hand: the listwise loss ranks within a group only, and the rows of a
ranking query teach no pointwise loss (they are chosen for their outcome)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch

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
            "user_id": [1, 1, 1, 2],
            "t0": [100, 100, 90_000, 100],
            "ranking_query": [False, True, False, False],
        }
    )
    assert pointwise_rows(frame).tolist() == [True, False, True, True]
    assert pointwise_rows(frame.drop(columns="ranking_query")).all()
    moments = moment_groups(frame)
    assert moments[0] == moments[1] and len(np.unique(moments)) == 3
    days = moment_groups(frame, 86400)
    assert days[0] == days[1] != days[2] != days[3]
