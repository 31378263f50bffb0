"""Multi-gate Mixture-of-Experts (Ma et al., KDD 2018): shared experts, one softmax gate and
one tower per task. Embeddings and experts are shared; gates and towers are per task."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from shopguide.model.base import ModelConfig, MultiTaskModel, mlp, tower


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
        self.gates = nn.ModuleList(nn.Linear(self.in_dim, config.num_experts) for _ in config.tasks)
        self.towers = nn.ModuleList(tower(sizes[-1], config) for _ in config.tasks)

    def shared_modules(self) -> list[nn.Module]:
        return [self.experts]

    def heads(self, x: torch.Tensor) -> torch.Tensor:
        experts = torch.stack([e(x) for e in self.experts], dim=1)  # (B, E, H)
        return torch.cat(
            [t(gated_mixture(g, x, experts)) for g, t in zip(self.gates, self.towers, strict=True)],
            dim=1,
        )
