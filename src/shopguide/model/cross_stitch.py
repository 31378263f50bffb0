"""Cross-stitch networks (Misra et al., CVPR 2016): one MLP column per task; after every layer
a learned task-by-task matrix mixes the columns' activations."""

from __future__ import annotations

import itertools
from typing import Literal

import torch
from torch import nn

from shopguide.model.base import ModelConfig, MultiTaskModel, mlp, tower


class CrossStitchConfig(ModelConfig):
    kind: Literal["cross_stitch"] = "cross_stitch"
    expert_hidden: tuple[int, ...]


def _stitch_init(tasks: int) -> torch.Tensor:
    """Mostly self (0.9), the rest spread over the other tasks, as in the paper."""
    if tasks == 1:
        return torch.ones(1, 1)
    off = 0.1 / (tasks - 1)
    return torch.full((tasks, tasks), off) + torch.eye(tasks) * (0.9 - off)


class CrossStitch(MultiTaskModel):
    config: CrossStitchConfig

    def __init__(self, config: CrossStitchConfig) -> None:
        super().__init__(config)
        tasks = len(config.head_widths())
        sizes = [self.in_dim, *config.expert_hidden]
        self.columns = nn.ModuleList(
            nn.ModuleList(mlp([i, o], config.dropout) for _ in range(tasks))
            for i, o in itertools.pairwise(sizes)
        )
        self.stitches = nn.ParameterList(
            nn.Parameter(_stitch_init(tasks)) for _ in config.expert_hidden
        )
        self.towers = nn.ModuleList(tower(sizes[-1], config, w) for w in config.head_widths())

    def shared_modules(self) -> list[nn.Module]:
        return [self.columns, self.stitches]

    def task_logits(self, x: torch.Tensor, shared: torch.Tensor) -> torch.Tensor:
        hs = [x] * len(self.towers)
        for layer, stitch in zip(self.columns, self.stitches, strict=True):
            out = torch.stack([f(h) for f, h in zip(layer, hs, strict=True)], dim=1)  # (B,T,H)
            hs = list(torch.einsum("st,bth->bsh", stitch, out).unbind(dim=1))
        return torch.cat([t(h) for t, h in zip(self.towers, hs, strict=True)], dim=1)
