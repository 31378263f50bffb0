"""Shared-bottom (hard parameter sharing, Caruana 1997): one bottom MLP feeds every tower."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from shopguide.model.base import ModelConfig, MultiTaskModel, mlp, tower


class SharedBottomConfig(ModelConfig):
    kind: Literal["shared_bottom"] = "shared_bottom"
    expert_hidden: tuple[int, ...]


class SharedBottom(MultiTaskModel):
    config: SharedBottomConfig

    def __init__(self, config: SharedBottomConfig) -> None:
        super().__init__(config)
        sizes = [self.in_dim, *config.expert_hidden]
        self.bottom = mlp(sizes, config.dropout)
        self.towers = nn.ModuleList(tower(sizes[-1], config, w) for w in config.head_widths())

    def shared_modules(self) -> list[nn.Module]:
        return [self.bottom]

    def shared_output(self, x: torch.Tensor) -> torch.Tensor:
        return self.bottom(x)

    def task_logits(self, x: torch.Tensor, shared: torch.Tensor) -> torch.Tensor:
        return torch.cat([t(shared) for t in self.towers], dim=1)
