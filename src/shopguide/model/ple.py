"""Progressive Layered Extraction (Tang et al., RecSys 2020): stacked extraction levels, each
with experts of its own per task plus shared experts; a task's gate mixes its own and the
shared experts, and a shared gate (all but the last level) mixes everything for the next level."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from shopguide.model.base import ModelConfig, MultiTaskModel, mlp, tower


class PLEConfig(ModelConfig):
    kind: Literal["ple"] = "ple"
    num_experts: int  # shared experts per level
    task_experts: int  # experts of each task per level
    levels: int
    expert_hidden: tuple[int, ...]


class ExtractionLevel(nn.Module):
    def __init__(self, in_dim: int, config: PLEConfig, last: bool) -> None:
        super().__init__()
        sizes = [in_dim, *config.expert_hidden]
        tasks, own, shared = len(config.head_widths()), config.task_experts, config.num_experts

        def experts(n: int) -> nn.ModuleList:
            return nn.ModuleList(mlp(sizes, config.dropout) for _ in range(n))

        self.task_experts = nn.ModuleList(experts(own) for _ in range(tasks))
        self.shared_experts = experts(shared)
        self.task_gates = nn.ModuleList(nn.Linear(in_dim, own + shared) for _ in range(tasks))
        self.shared_gate = None if last else nn.Linear(in_dim, tasks * own + shared)

    def forward(self, task_in: list[torch.Tensor], shared_in: torch.Tensor) -> tuple:
        return self.probed(task_in, shared_in)[:2]

    def probed(self, task_in: list[torch.Tensor], shared_in: torch.Tensor) -> tuple:
        """(task outputs, shared output or None, [each task gate's weights, then the shared
        gate's], [each task's own expert outputs, then the shared ones'])."""
        shared = [e(shared_in) for e in self.shared_experts]
        own = [[e(h) for e in es] for es, h in zip(self.task_experts, task_in, strict=True)]
        weights = [
            torch.softmax(g(h), dim=1) for g, h in zip(self.task_gates, task_in, strict=True)
        ]
        task_out = [
            (w.unsqueeze(2) * torch.stack(o + shared, dim=1)).sum(dim=1)
            for w, o in zip(weights, own, strict=True)
        ]
        outputs = [*own, shared]
        if self.shared_gate is None:
            return task_out, None, weights, outputs
        everything = torch.stack([e for o in own for e in o] + shared, dim=1)
        weights.append(torch.softmax(self.shared_gate(shared_in), dim=1))
        mixed = (weights[-1].unsqueeze(2) * everything).sum(dim=1)
        return task_out, mixed, weights, outputs


class PLE(MultiTaskModel):
    config: PLEConfig

    def __init__(self, config: PLEConfig) -> None:
        super().__init__(config)
        dims = [self.in_dim] + [config.expert_hidden[-1]] * (config.levels - 1)
        self.levels = nn.ModuleList(
            ExtractionLevel(d, config, last=i == config.levels - 1) for i, d in enumerate(dims)
        )
        self.towers = nn.ModuleList(
            tower(config.expert_hidden[-1], config, w) for w in config.head_widths()
        )

    def shared_modules(self) -> list[nn.Module]:
        experts = [m for level in self.levels for m in (level.task_experts, level.shared_experts)]
        return experts

    def task_logits(self, x: torch.Tensor, shared: torch.Tensor) -> torch.Tensor:
        task_in, shared_in = [x] * len(self.towers), x
        for level in self.levels:
            task_in, shared_in = level(task_in, shared_in)
        return torch.cat([t(h) for t, h in zip(self.towers, task_in, strict=True)], dim=1)

    def expert_probes(self, x: torch.Tensor) -> tuple[dict, dict]:
        """({gate: weights}, {expert: outputs}) per level (`l<level>.<task or shared>`), for
        `shopguide.model.experts`."""
        names = [*self.config.head_names(), "shared"]
        gates, experts = {}, {}
        task_in, shared_in = [x] * len(self.towers), x
        for i, level in enumerate(self.levels):
            task_in, shared_in, weights, outputs = level.probed(task_in, shared_in)
            gates |= {f"l{i}.{names[j]}": w for j, w in enumerate(weights)}
            experts |= {
                f"l{i}.{names[j]}_{k}": out
                for j, group in enumerate(outputs)
                for k, out in enumerate(group)
            }
        return gates, experts
