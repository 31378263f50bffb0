"""Soft parameter sharing (Duong et al., 2015): a bottom per task over shared embeddings, with
an L2 penalty pulling each task's bottom weights toward their mean across tasks."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from shopguide.model.base import ModelConfig, MultiTaskModel, mlp, tower


class SoftSharingConfig(ModelConfig):
    kind: Literal["soft_sharing"] = "soft_sharing"
    expert_hidden: tuple[int, ...]
    sharing_l2: float


class SoftSharing(MultiTaskModel):
    config: SoftSharingConfig

    def __init__(self, config: SoftSharingConfig) -> None:
        super().__init__(config)
        sizes = [self.in_dim, *config.expert_hidden]
        self.bottoms = nn.ModuleList(mlp(sizes, config.dropout) for _ in config.head_widths())
        self.towers = nn.ModuleList(tower(sizes[-1], config, w) for w in config.head_widths())

    def shared_modules(self) -> list[nn.Module]:
        return [self.bottoms]

    def task_logits(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([t(b(x)) for b, t in zip(self.bottoms, self.towers, strict=True)], dim=1)

    def penalty(self, logits: torch.Tensor) -> torch.Tensor:
        """sharing_l2 * sum over tensors and tasks of ||W_task - mean_tasks(W)||^2."""
        total = logits.new_zeros(())
        for same in zip(*(b.parameters() for b in self.bottoms), strict=True):
            stacked = torch.stack(same)
            total = total + (stacked - stacked.mean(dim=0)).pow(2).sum()
        return self.config.sharing_l2 * total
