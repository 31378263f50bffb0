"""Ways to turn per-task losses into one update: fixed weights, uncertainty weighting (Kendall
et al., CVPR 2018), GradNorm (Chen et al., ICML 2018), PCGrad (Yu et al., NeurIPS 2020, on
the shared parameters or, cheaper, on the shared layer's output),
dynamic weight averaging (Liu et al., CVPR 2019), MGDA-UB, the multiple-gradient descent
toward a Pareto-stationary point (Sener and Koltun, NeurIPS 2018), and alternating
optimisation (one task's loss per step, round robin). Each sets `.grad` on the trainable
parameters; the optimizer step stays the caller's."""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist
from torch import nn


class Balancer(nn.Module):
    """Fixed task weights (all 1 unless given)."""

    def __init__(self, weights: list[float]) -> None:
        super().__init__()
        self.register_buffer("task_weights", torch.tensor(weights, dtype=torch.float32))

    def backward(
        self,
        losses: torch.Tensor,
        extra: torch.Tensor,
        representation: torch.Tensor,
        params: list[nn.Parameter],
    ) -> None:
        """`losses` (tasks,), `extra` the regularisers, `representation` the model's
        `shared_output` (the last activations every task reads), `params` the trainable
        model parameters."""
        ((self.task_weights * losses).sum() + extra).backward()

    def after_step(self) -> None:
        """Hook run after the optimizer step."""

    def after_epoch(self) -> None:
        """Hook run after an epoch's last step."""

    def current_weights(self) -> list[float]:
        return self.task_weights.tolist()


class Uncertainty(Balancer):
    """Learned homoscedastic uncertainty s_t = log sigma_t^2: exp(-s_t) L_t + s_t / 2."""

    def __init__(self, weights: list[float]) -> None:
        super().__init__(weights)
        self.log_var = nn.Parameter(torch.zeros(len(weights)))

    def backward(
        self,
        losses: torch.Tensor,
        extra: torch.Tensor,
        representation: torch.Tensor,
        params: list[nn.Parameter],
    ) -> None:
        scaled = torch.exp(-self.log_var) * self.task_weights * losses + self.log_var / 2
        (scaled.sum() + extra).backward()

    def current_weights(self) -> list[float]:
        return (torch.exp(-self.log_var) * self.task_weights).tolist()


class GradNorm(Balancer):
    """Learned task weights that equalise the tasks' gradient norms on the shared
    representation, scaled by each task's relative inverse training rate to the power alpha."""

    def __init__(self, weights: list[float], alpha: float) -> None:
        super().__init__(weights)
        self.alpha = alpha
        self.learned = nn.Parameter(torch.tensor(weights, dtype=torch.float32))
        self.register_buffer("initial_losses", torch.zeros(len(weights)))

    def backward(
        self,
        losses: torch.Tensor,
        extra: torch.Tensor,
        representation: torch.Tensor,
        params: list[nn.Parameter],
    ) -> None:
        if not bool(self.initial_losses.any()):
            self.initial_losses.copy_(losses.detach())
        norms = torch.stack(
            [
                torch.autograd.grad(loss, representation, retain_graph=True)[0].norm()
                for loss in losses
            ]
        )
        weighted = self.learned * norms
        ratio = losses.detach() / self.initial_losses.clamp_min(1e-12)
        target = (weighted.mean() * (ratio / ratio.mean()) ** self.alpha).detach()
        (weight_grad,) = torch.autograd.grad((weighted - target).abs().sum(), self.learned)
        ((self.learned.detach() * losses).sum() + extra).backward()
        self.learned.grad = weight_grad

    @torch.no_grad()
    def after_step(self) -> None:
        self.learned.clamp_(min=1e-3)
        self.learned.mul_(len(self.learned) / self.learned.sum())

    def current_weights(self) -> list[float]:
        return self.learned.tolist()


def task_gradients(losses: torch.Tensor, representation: torch.Tensor) -> torch.Tensor:
    """(tasks, size of `representation`): each loss's gradient at the shared activations,
    flat, in float32; the graph is kept for the step's own backward pass."""
    return torch.stack(
        [
            torch.autograd.grad(loss, representation, retain_graph=True)[0].flatten().float()
            for loss in losses
        ]
    )


def project_conflicts(grads: list[torch.Tensor]) -> torch.Tensor:
    """PCGrad's surgery on flat per-task gradients: each loses its component along any other
    task's gradient it points against (the others visited in random order); their sum."""
    projected = []
    for i, g in enumerate(grads):
        g = g.clone()
        for j in torch.randperm(len(grads)).tolist():
            if j != i and (dot := torch.dot(g, grads[j])) < 0:
                g -= dot / grads[j].pow(2).sum().clamp_min(1e-20) * grads[j]
        projected.append(g)
    return torch.stack(projected).sum(dim=0)


class PCGrad(Balancer):
    """Projecting conflicting gradients on the parameters more than one task's loss moves
    (the shared ones), as in the paper: one backward pass per task through the whole network,
    and dense id tables. A parameter only one task reaches (its tower) gets that task's
    gradient unchanged: projecting whole-model vectors would copy one task's tower gradient
    into another's."""

    def backward(
        self,
        losses: torch.Tensor,
        extra: torch.Tensor,
        representation: torch.Tensor,
        params: list[nn.Parameter],
    ) -> None:
        per_task = [
            torch.autograd.grad(w * loss, params, retain_graph=True, allow_unused=True)
            for loss, w in zip(losses, self.task_weights, strict=True)
        ]
        # A task reaches a parameter when its gradient there is not all zero (the stacked
        # losses give every task a zero gradient on the other towers, not None). Leaving out a
        # parameter only one task reaches changes no projection: the others are zero there.
        reached = [
            [g[k] is not None and bool(g[k].any()) for g in per_task] for k in range(len(params))
        ]
        shared = [k for k, r in enumerate(reached) if sum(r) > 1]
        grads = [
            torch.cat(
                [
                    (g[k] if g[k] is not None else torch.zeros_like(params[k])).flatten()
                    for k in shared
                ]
            )
            if shared
            else torch.zeros(0)
            for g in per_task
        ]
        total = project_conflicts(grads)
        if extra.requires_grad:
            extra.backward()
        steps: dict[int, torch.Tensor] = {}
        offset = 0
        for k in shared:
            n = params[k].numel()
            steps[k] = total[offset : offset + n].view_as(params[k])
            offset += n
        for k, p in enumerate(params):
            if k not in steps:
                own = [g[k] for g, r in zip(per_task, reached[k], strict=True) if r]
                if not own:
                    continue
                steps[k] = torch.stack(own).sum(dim=0)
            p.grad = steps[k] if p.grad is None else p.grad + steps[k]


class SharedOutputPCGrad(Balancer):
    """PCGrad's surgery on the tasks' gradients at the model's `shared_output` (the last
    activations every task reads) instead of on the shared parameters, in the spirit of
    MGDA-UB's upper bound: each task's extra backward pass runs through its own layers only,
    and one backward pass carries the projected sum into the shared layers (whose gradient is
    linear in it), so id tables stay sparse. Layers a task reaches besides `shared_output`
    (MMoE's gates from the input) get the plain sum."""

    def backward(
        self,
        losses: torch.Tensor,
        extra: torch.Tensor,
        representation: torch.Tensor,
        params: list[nn.Parameter],
    ) -> None:
        weighted = self.task_weights * losses
        grads = task_gradients(weighted, representation)
        correction = (project_conflicts(list(grads)) - grads.sum(dim=0)).view_as(representation)
        # The plain backward gives `representation` the plain sum; the correction added at
        # the same node turns it into the projected sum.
        torch.autograd.backward(
            [weighted.sum() + extra, representation],
            [torch.ones_like(losses[0]), correction.to(representation.dtype)],
        )


class DynamicWeightAverage(Balancer):
    """Each epoch's task weights from how fast each task's mean training loss fell over the
    two epochs before: K softmax(r / temperature), r_k = L_k(t-1) / L_k(t-2) (a task whose
    loss falls slower weighs more), times the fixed weights; equal until two epochs have run.
    No extra backward pass: the cost of fixed weighting."""

    def __init__(self, weights: list[float], temperature: float) -> None:
        super().__init__(weights)
        self.temperature = temperature
        tasks = len(weights)
        self.register_buffer("dynamic", torch.ones(tasks))
        self.register_buffer("sums", torch.zeros(tasks, dtype=torch.float64))
        self.register_buffer("steps", torch.zeros((), dtype=torch.float64))
        # the mean losses of the last two epochs (NaN: not run yet)
        self.register_buffer("means", torch.full((2, tasks), float("nan"), dtype=torch.float64))

    def backward(
        self,
        losses: torch.Tensor,
        extra: torch.Tensor,
        representation: torch.Tensor,
        params: list[nn.Parameter],
    ) -> None:
        ((self.dynamic * self.task_weights * losses).sum() + extra).backward()
        self.sums += losses.detach().double()
        self.steps += 1

    def after_epoch(self) -> None:
        sums = torch.cat([self.sums, self.steps.reshape(1)])
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(sums)  # every process the same weights
        if sums[-1] == 0:  # a warm-up epoch: the balancer took no step
            return
        self.means.copy_(torch.stack([self.means[1], sums[:-1] / sums[-1]]))
        if not self.means.isnan().any():
            rate = self.means[1] / self.means[0].clamp_min(1e-12)
            weights = len(rate) * torch.softmax(rate / self.temperature, dim=0)
            self.dynamic.copy_(weights.float())
        self.sums.zero_()
        self.steps.zero_()

    def current_weights(self) -> list[float]:
        return (self.dynamic * self.task_weights).tolist()


def min_norm_weights(gram: np.ndarray, steps: int = 25) -> np.ndarray:
    """The convex weights a (summing to 1) of the shortest vector in the convex hull of
    gradients whose Gram matrix is `gram` (tasks, tasks): min a^T G a, by Frank-Wolfe with
    exact line search, as MGDA's solver (Sener and Koltun, Algorithm 2). In NumPy: on a
    tasks x tasks matrix, torch's per-operation overhead would cost more than the step's
    extra backward passes."""
    tasks = len(gram)
    alpha = np.full(tasks, 1.0 / tasks)
    for _ in range(steps):
        towards = gram @ alpha
        t = int(np.argmin(towards))
        vv, vg, gg = float(alpha @ towards), float(towards[t]), float(gram[t, t])
        denominator = vv - 2 * vg + gg
        if denominator <= 1e-12:
            break
        step = min(max((vv - vg) / denominator, 0.0), 1.0)
        if step <= 1e-6:
            break
        alpha = (1 - step) * alpha
        alpha[t] += step
    return alpha


class MGDAUpperBound(Balancer):
    """MGDA-UB: each step, the task weights whose combination of the tasks' gradients on the
    shared activations is shortest (the min-norm point of their convex hull: a direction that
    lowers no task's loss at the others' cost, to first order). The paper's upper bound takes
    the gradients on the shared activations instead of the shared parameters: one backward
    pass per task through the task's own layers. Gradients are normalised by their norms first
    (the paper's loss+ normalisation would need the initial losses), and the weights scaled to
    sum to the number of tasks, so the step size is fixed weighting's."""

    def __init__(self, weights: list[float]) -> None:
        super().__init__(weights)
        self.register_buffer("latest", torch.tensor(weights, dtype=torch.float32))

    def backward(
        self,
        losses: torch.Tensor,
        extra: torch.Tensor,
        representation: torch.Tensor,
        params: list[nn.Parameter],
    ) -> None:
        weighted = self.task_weights * losses
        grads = task_gradients(weighted, representation)
        grads = grads / grads.norm(dim=1, keepdim=True).clamp_min(1e-12)
        gram = grads @ grads.T
        if dist.is_available() and dist.is_initialized():  # every process the same weights
            dist.all_reduce(gram)
        solved = min_norm_weights(gram.detach().double().cpu().numpy()) * len(losses)
        alpha = torch.from_numpy(solved).float().to(losses.device)
        self.latest.copy_(alpha)
        ((alpha.detach() * weighted).sum() + extra).backward()

    def current_weights(self) -> list[float]:
        return (self.latest * self.task_weights).tolist()


class Alternating(Balancer):
    """Alternating optimisation: each step trains one task's loss (times its fixed weight),
    the tasks taking turns in a fixed round robin; regularisers every step. The cheapest
    balancer (one task's tower gets gradients per step) and the classic way to train tasks
    whose losses pull shared layers apart; every task sees a step in len(tasks)."""

    def __init__(self, weights: list[float]) -> None:
        super().__init__(weights)
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def backward(
        self,
        losses: torch.Tensor,
        extra: torch.Tensor,
        representation: torch.Tensor,
        params: list[nn.Parameter],
    ) -> None:
        turn = int(self.step) % len(losses)
        (self.task_weights[turn] * losses[turn] + extra).backward()

    def after_step(self) -> None:
        self.step += 1

    def current_weights(self) -> list[float]:
        """Each task's weight averaged over one round: its fixed weight over len(tasks)."""
        return (self.task_weights / len(self.task_weights)).tolist()


def make_balancer(
    name: str,
    weights: list[float],
    gradnorm_alpha: float,
    dwa_temperature: float = 2.0,
    pcgrad_space: str = "shared_output",
) -> Balancer:
    if name == "dwa":
        return DynamicWeightAverage(weights, dwa_temperature)
    if name == "uncertainty":
        return Uncertainty(weights)
    if name == "gradnorm":
        return GradNorm(weights, gradnorm_alpha)
    if name == "pcgrad":
        return PCGrad(weights) if pcgrad_space == "parameters" else SharedOutputPCGrad(weights)
    if name == "mgda_ub":
        return MGDAUpperBound(weights)
    if name == "alternating":
        return Alternating(weights)
    return Balancer(weights)
