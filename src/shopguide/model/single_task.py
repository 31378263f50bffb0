"""Single-task baseline: one independent network per task (its own embeddings, bottom and
tower), trained side by side; nothing is shared, so it shows what sharing buys."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from shopguide.model.base import ModelConfig, MultiTaskModel, mlp, tower


class SingleTaskConfig(ModelConfig):
    kind: Literal["single_task"] = "single_task"
    expert_hidden: tuple[int, ...]


class SingleTask(MultiTaskModel):
    config: SingleTaskConfig

    def __init__(self, config: SingleTaskConfig) -> None:
        super().__init__(config, encoders=len(config.head_widths()))
        sizes = [self.in_dim, *config.expert_hidden]
        self.bottoms = nn.ModuleList(mlp(sizes, config.dropout) for _ in config.head_widths())
        self.towers = nn.ModuleList(tower(sizes[-1], config, w) for w in config.head_widths())

    def shared_modules(self) -> list[nn.Module]:
        return [self.bottoms]

    def task_logits(self, x: torch.Tensor, shared: torch.Tensor) -> torch.Tensor:
        blocks = x.split(self.in_dim, dim=1)
        return torch.cat(
            [t(b(block)) for block, b, t in zip(blocks, self.bottoms, self.towers, strict=True)],
            dim=1,
        )
