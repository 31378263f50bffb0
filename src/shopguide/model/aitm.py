"""Adaptive Information Transfer Multi-task (Xi et al., KDD 2021) for sequential conversion
steps: each task's tower output attends over itself and information transferred from the
previous task, and an optional calibrator penalises a later step's probability exceeding the
previous one's. On Taobao the behaviours are not a strict funnel (a buy need not follow a
cart), so the calibrator weight defaults to 0."""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

from shopguide.model.base import ModelConfig, MultiTaskModel, mlp, tower


class AITMConfig(ModelConfig):
    kind: Literal["aitm"] = "aitm"
    expert_hidden: tuple[int, ...]
    calibration_weight: float


class Attention(nn.Module):
    """Self-attention over the (transferred, own) pair of task vectors."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.q, self.k, self.v = (nn.Linear(dim, dim, bias=False) for _ in range(3))
        self.scale = 1 / math.sqrt(dim)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:  # (B, 2, H) -> (B, H)
        scores = (self.q(inputs) * self.k(inputs)).sum(dim=2) * self.scale  # (B, 2)
        return (torch.softmax(scores, dim=1).unsqueeze(2) * self.v(inputs)).sum(dim=1)


class AITM(MultiTaskModel):
    config: AITMConfig

    def __init__(self, config: AITMConfig) -> None:
        super().__init__(config)
        sizes = [self.in_dim, *config.expert_hidden]
        widths = config.head_widths()
        dim, rest = sizes[-1], widths[1:]
        self.bottoms = nn.ModuleList(mlp(sizes, config.dropout) for _ in widths)
        self.transfers = nn.ModuleList(mlp([dim, dim], config.dropout) for _ in rest)
        self.attentions = nn.ModuleList(Attention(dim) for _ in rest)
        self.towers = nn.ModuleList(tower(dim, config, w) for w in widths)

    def shared_modules(self) -> list[nn.Module]:
        return [self.bottoms]

    def task_logits(self, x: torch.Tensor, shared: torch.Tensor) -> torch.Tensor:
        z = self.bottoms[0](x)
        logits = [self.towers[0](z)]
        for i in range(1, len(self.towers)):
            own = self.bottoms[i](x)
            z = self.attentions[i - 1](torch.stack([self.transfers[i - 1](z), own], dim=1))
            logits.append(self.towers[i](z))
        return torch.cat(logits, dim=1)

    def penalty(self, logits: torch.Tensor) -> torch.Tensor:
        binary = len(self.config.tasks)
        if not self.config.calibration_weight or binary < 2:
            return logits.new_zeros(())
        p = torch.sigmoid(logits[:, :binary])
        excess = torch.relu(p[:, 1:] - p[:, :-1]).sum(dim=1).mean()
        return self.config.calibration_weight * excess
