"""Sharing by tensor factorisation (Yang and Hospedales, ICLR 2017, "Deep Multi-task
Representation Learning: A Tensor Factorisation Approach"): every task has its own bottom,
but each layer's task weights, stacked into a (tasks, in, out) tensor, are a low-rank product:
W_t = sum_k S[t, k] U_k. The `factor_rank` bases U_k are shared; each task learns only its
mixing row S[t]. How much the tasks share is learned, as in soft sharing, but through the
factorisation instead of a penalty: rank 1 makes the tasks' layers scaled copies of one,
a rank of the number of tasks lets them be independent."""

from __future__ import annotations

import itertools
import math
from typing import Literal

import torch
from torch import nn

from shopguide.model.base import ModelConfig, MultiTaskModel, PooledDropout, tower


class TensorFactorisedConfig(ModelConfig):
    kind: Literal["tensor_factorised"] = "tensor_factorised"
    expert_hidden: tuple[int, ...]
    factor_rank: int


class FactorisedLayer(nn.Module):
    """One layer of every task's bottom: weights W_t = sum_k mix[t, k] basis[k], a bias per
    task, then ReLU and dropout. The bases start as nn.Linear's do and the mixing rows at
    N(0, 1/rank), so each task's weights start with nn.Linear's variance."""

    def __init__(self, tasks: int, in_dim: int, out_dim: int, rank: int, dropout: float) -> None:
        super().__init__()
        bound = 1 / math.sqrt(in_dim)
        self.basis = nn.Parameter(torch.empty(rank, in_dim, out_dim).uniform_(-bound, bound))
        self.mix = nn.Parameter(torch.randn(tasks, rank) / math.sqrt(rank))
        self.bias = nn.Parameter(torch.empty(tasks, 1, out_dim).uniform_(-bound, bound))
        self.dropout = PooledDropout(dropout)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """(batch, in) shared by every task, or (tasks, batch, in) -> (tasks, batch, out)."""
        if h.dim() == 2:  # rank products of the shared input, then each task's mix of them
            projected = torch.einsum("bi,kio->kbo", h, self.basis)
            out = torch.einsum("tk,kbo->tbo", self.mix, projected)
        else:
            out = torch.bmm(h, torch.einsum("tk,kio->tio", self.mix, self.basis))
        return self.dropout(torch.relu(out + self.bias))


class TensorFactorised(MultiTaskModel):
    config: TensorFactorisedConfig

    def __init__(self, config: TensorFactorisedConfig) -> None:
        super().__init__(config)
        tasks = len(config.head_widths())
        sizes = [self.in_dim, *config.expert_hidden]
        self.layers = nn.ModuleList(
            FactorisedLayer(tasks, i, o, config.factor_rank, config.dropout)
            for i, o in itertools.pairwise(sizes)
        )
        self.towers = nn.ModuleList(tower(sizes[-1], config, w) for w in config.head_widths())

    def shared_modules(self) -> list[nn.Module]:
        return [self.layers]

    def task_logits(self, x: torch.Tensor, shared: torch.Tensor) -> torch.Tensor:
        h = x
        for layer in self.layers:
            h = layer(h)
        return torch.cat([t(h[i]) for i, t in enumerate(self.towers)], dim=1)
