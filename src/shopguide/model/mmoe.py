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
        return self.shared_output(x).mean(dim=1)

    def shared_width(self) -> int:
        return self.config.expert_hidden[-1]

    def shared_output(self, x: torch.Tensor) -> torch.Tensor:
        """Every expert's output, (B, E, H)."""
        return parallel_mlps(self.experts, x)

    def _gates(self, x: torch.Tensor) -> torch.Tensor:
        """Every task's gate weights in one matmul: (B, T, E)."""
        logits = torch.addmm(
            torch.cat([g.bias for g in self.gates]),
            x,
            torch.cat([g.weight for g in self.gates]).t(),
        ).unflatten(1, (len(self.gates), -1))
        return torch.softmax(logits, dim=2)

    def task_logits(self, x: torch.Tensor, shared: torch.Tensor) -> torch.Tensor:
        mixed = torch.bmm(self._gates(x), shared)  # (B, T, H)
        return torch.cat([t(mixed[:, i]) for i, t in enumerate(self.towers)], dim=1)

    def expert_probes(self, x: torch.Tensor) -> tuple[dict, dict]:
        """({task: gate weights (B, E)}, {expert: outputs (B, H)}) for `shopguide.model.experts`."""
        gates, experts = self._gates(x), self.shared_output(x)
        names = self.config.head_names()
        return (
            {t: gates[:, i] for i, t in enumerate(names)},
            {f"expert_{e}": experts[:, e] for e in range(experts.shape[1])},
        )
