"""Loss balancers on toy problems where the answer is known by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from shopguide.model.balance import (
    Alternating,
    MGDAUpperBound,
    PCGrad,
    SharedOutputPCGrad,
    min_norm_weights,
)


def test_pcgrad_projects_only_what_the_tasks_share() -> None:
    """One shared weight w, a tower weight per task: loss_a = w * a, loss_b = -w * b.
    The tasks' gradients on w (+a, -b) conflict, so PCGrad removes each one's component along
    the other: both become 0 and so does their sum. Each tower gets its own task's gradient
    unchanged (d loss_a / d a = w, d loss_b / d b = -w)."""
    w, a, b = (nn.Parameter(torch.tensor([v])) for v in (1.0, 1.0, 2.0))
    losses = torch.stack([(w * a).sum(), (-w * b).sum()])
    PCGrad([1.0, 1.0]).backward(losses, torch.zeros(()), torch.zeros(1), [w, a, b])
    assert torch.allclose(w.grad, torch.zeros(1))
    assert torch.allclose(a.grad, torch.tensor([1.0]))
    assert torch.allclose(b.grad, torch.tensor([-1.0]))


def test_pcgrad_leaves_agreeing_tasks_as_a_plain_sum() -> None:
    w, a, b = (nn.Parameter(torch.tensor([v])) for v in (1.0, 1.0, 2.0))
    losses = torch.stack([(w * a).sum(), (w * b).sum()])
    extra = (w**2).sum()  # a regulariser: added as it is
    PCGrad([1.0, 1.0]).backward(losses, extra, torch.zeros(1), [w, a, b])
    assert torch.allclose(w.grad, torch.tensor([1.0 + 2.0 + 2.0]))
    assert torch.allclose(a.grad, torch.tensor([1.0]))
    assert torch.allclose(b.grad, torch.tensor([1.0]))


def test_shared_output_pcgrad_projects_at_the_shared_layer() -> None:
    """The shared layer's output r = w (two units). The tasks' gradients there are (1, 0) and
    (-1, 1): they conflict (dot -1), so each loses its part along the other: (0.5, 0.5) and
    (0, 1). w gets their sum (0.5, 1.5) (the plain sum would be (0, 1)); each tower its own
    task's gradient, and a regulariser is added as it is."""
    w = nn.Parameter(torch.zeros(2))
    a, b = nn.Parameter(torch.tensor([1.0, 0.0])), nn.Parameter(torch.tensor([-1.0, 1.0]))
    r = w * 1.0
    losses = torch.stack([(r * a).sum() + a.sum(), (r * b).sum()])
    extra = (w - 1.0).pow(2).sum()  # gradient -2 at w = 0, per unit
    SharedOutputPCGrad([1.0, 1.0]).backward(losses, extra, r, [w, a, b])
    assert torch.allclose(w.grad, torch.tensor([0.5 - 2.0, 1.5 - 2.0]))
    assert torch.allclose(a.grad, torch.ones(2))  # r = 0, plus the own term a.sum()
    assert torch.allclose(b.grad, torch.zeros(2))


def test_shared_output_pcgrad_leaves_agreeing_tasks_as_a_plain_sum() -> None:
    w = nn.Parameter(torch.tensor([1.0, 2.0]))
    r = 3.0 * w
    losses = torch.stack([r.sum(), (2.0 * r).sum()])
    SharedOutputPCGrad([1.0, 0.5]).backward(losses, torch.zeros(()), r, [w])
    assert torch.allclose(w.grad, torch.full((2,), 3.0 * (1.0 + 0.5 * 2.0)))


def test_min_norm_weights_find_the_shortest_combination() -> None:
    """Orthogonal gradients of squared lengths 1 and 4: min a1^2 + 4 a2^2 with a1 + a2 = 1 is
    at (0.8, 0.2); opposed gradients of equal length cancel at (0.5, 0.5)."""
    assert min_norm_weights(np.array([[1.0, 0.0], [0.0, 4.0]])) == pytest.approx([0.8, 0.2])
    assert min_norm_weights(np.array([[1.0, -1.0], [-1.0, 1.0]])) == pytest.approx([0.5, 0.5])
    # equal lengths, an acute angle: the shortest point is the midpoint
    assert min_norm_weights(np.array([[1.0, 0.5], [0.5, 1.0]])) == pytest.approx([0.5, 0.5])
    # one gradient inside: a = (1, 0) when g1 . g2 >= |g1|^2
    assert min_norm_weights(np.array([[1.0, 1.0], [1.0, 4.0]])) == pytest.approx([1.0, 0.0])


def test_mgda_ub_weighs_the_tasks_by_the_min_norm_point_on_the_shared_output() -> None:
    """Shared output z (one row, two units); loss_a reads unit 0, loss_b twice unit 1: their
    gradients on z are (1, 0) and (0, 2), normalised to unit length, so the weights are even
    (1, 1 after scaling to two tasks) and each unit's gradient is its task's own."""
    z_param = nn.Parameter(torch.tensor([[1.0, 1.0]]))
    z = z_param * 1.0
    losses = torch.stack([z[0, 0], 2 * z[0, 1]])
    balancer = MGDAUpperBound([1.0, 1.0])
    balancer.backward(losses, torch.zeros(()), z, [z_param])
    assert balancer.current_weights() == pytest.approx([1.0, 1.0])
    assert torch.allclose(z_param.grad, torch.tensor([[1.0, 2.0]]))


def test_alternating_trains_one_task_per_step_in_turn() -> None:
    w = nn.Parameter(torch.tensor([1.0, 1.0]))
    balancer = Alternating([1.0, 3.0])
    seen = []
    for _ in range(4):
        w.grad = None
        balancer.backward(torch.stack([w[0] * 2, w[1] * 5]), torch.zeros(()), w, [w])
        balancer.after_step()
        seen.append(w.grad.tolist())
    assert seen == [[2.0, 0.0], [0.0, 15.0], [2.0, 0.0], [0.0, 15.0]]
    assert balancer.current_weights() == pytest.approx([0.5, 1.5])
