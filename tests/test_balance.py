"""Loss balancers on toy problems where the answer is known by hand."""

from __future__ import annotations

import torch
from torch import nn

from shopguide.model.balance import PCGrad


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
