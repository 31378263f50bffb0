"""Multi-gate Mixture-of-Experts (Ma et al., KDD 2018): shared experts, one softmax gate and
one tower per task. Embeddings and experts are shared; gates and towers are per task."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from shopguide.model.base import ModelConfig, MultiTaskModel, mlp, parallel_mlps, tower


class MMoEConfig(ModelConfig):
    kind: Literal["mmoe"] = "mmoe"
    num_experts: int
    expert_hidden: tuple[int, ...]


def gated_mixture(gate: nn.Module, x: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
    """Softmax-weighted sum of expert outputs (B, E, H) under `gate(x)` -> (B, H)."""
    return (torch.softmax(gate(x), dim=1).unsqueeze(2) * experts).sum(dim=1)


class MMoE(MultiTaskModel):
    config: MMoEConfig

    def __init__(self, config: MMoEConfig) -> None:
        super().__init__(config)
        sizes = [self.in_dim, *config.expert_hidden]
        self.experts = nn.ModuleList(mlp(sizes, config.dropout) for _ in range(config.num_experts))
        widths = config.head_widths()
        self.gates = nn.ModuleList(nn.Linear(self.in_dim, config.num_experts) for _ in widths)
        self.towers = nn.ModuleList(tower(sizes[-1], config, w) for w in widths)

    def shared_modules(self) -> list[nn.Module]:
        return [self.experts]

    def shared_representation(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([e(x) for e in self.experts], dim=1).mean(dim=1)

    def task_logits(self, x: torch.Tensor) -> torch.Tensor:
        experts = parallel_mlps(self.experts, x)  # (B, E, H)
        gates = torch.addmm(
            torch.cat([g.bias for g in self.gates]),
            x,
            torch.cat([g.weight for g in self.gates]).t(),
        ).unflatten(1, (len(self.gates), -1))  # every task's gate in one matmul: (B, T, E)
        mixed = torch.bmm(torch.softmax(gates, dim=2), experts)  # (B, T, H)
        return torch.cat([t(mixed[:, i]) for i, t in enumerate(self.towers)], dim=1)
