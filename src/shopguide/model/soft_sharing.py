"""Soft parameter sharing: a bottom per task over shared embeddings, each layer's task copies
tied by a penalty instead of being one layer. `l2` pulls each copy toward the tasks' mean
(Duong et al., 2015); `l1` does the same with absolute deviations, so most weights end up
exactly shared and a few differ; `trace_norm` penalises the nuclear norm of the copies stacked
as a (tasks, weights) matrix, pushing them toward a low-rank family rather than one mean
(Yang and Hospedales, ICLR 2017 workshop)."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import AliasChoices, Field
from torch import nn

from shopguide.model.base import ModelConfig, MultiTaskModel, mlp, tower


class SoftSharingConfig(ModelConfig):
    kind: Literal["soft_sharing"] = "soft_sharing"
    expert_hidden: tuple[int, ...]
    # saved before the penalty had a choice of norm: `sharing_l2`, the L2 penalty's weight
    sharing_weight: float = Field(validation_alias=AliasChoices("sharing_weight", "sharing_l2"))
    sharing_penalty: Literal["l2", "l1", "trace_norm"] = "l2"


class SoftSharing(MultiTaskModel):
    config: SoftSharingConfig

    def __init__(self, config: SoftSharingConfig) -> None:
        super().__init__(config)
        sizes = [self.in_dim, *config.expert_hidden]
        self.bottoms = nn.ModuleList(mlp(sizes, config.dropout) for _ in config.head_widths())
        self.towers = nn.ModuleList(tower(sizes[-1], config, w) for w in config.head_widths())

    def shared_modules(self) -> list[nn.Module]:
        return [self.bottoms]

    def task_logits(self, x: torch.Tensor, shared: torch.Tensor) -> torch.Tensor:
        return torch.cat([t(b(x)) for b, t in zip(self.bottoms, self.towers, strict=True)], dim=1)

    def penalty(self, logits: torch.Tensor) -> torch.Tensor:
        """sharing_weight times the sum over the bottoms' tensors of: ||W - mean_tasks(W)||^2
        (l2), |W - mean_tasks(W)| (l1), or the nuclear norm of the tasks' copies (trace_norm)."""
        total = logits.new_zeros(())
        for same in zip(*(b.parameters() for b in self.bottoms), strict=True):
            stacked = torch.stack(same).flatten(1)  # (tasks, weights)
            if self.config.sharing_penalty == "trace_norm":
                total = total + torch.linalg.matrix_norm(stacked, ord="nuc")
                continue
            deviation = stacked - stacked.mean(dim=0)
            if self.config.sharing_penalty == "l1":
                total = total + deviation.abs().sum()
            else:
                total = total + deviation.pow(2).sum()
        return self.config.sharing_weight * total
