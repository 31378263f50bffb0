"""Entire Space Multi-task Model (Ma et al., SIGIR 2018). Towers share the embeddings; a
chained task's probability is its parent's probability times a conditional one learned only
through that product, e.g. p(buy) = p(cart) * p(buy | cart), so the conditional rate is
trained over all exposures instead of the biased sample of carted ones."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import model_validator
from torch import nn

from shopguide.model.base import ModelConfig, MultiTaskModel, mlp, tower


class ESMMConfig(ModelConfig):
    kind: Literal["esmm"] = "esmm"
    expert_hidden: tuple[int, ...]
    chain: dict[str, str]  # task -> parent task it is conditioned on

    @model_validator(mode="after")
    def _chain_is_ordered(self) -> ESMMConfig:
        for child, parent in self.chain.items():
            if child not in self.tasks or parent not in self.tasks:
                raise ValueError(f"chain {child} <- {parent}: both must be tasks {self.tasks}")
            if self.tasks.index(parent) >= self.tasks.index(child):
                raise ValueError(f"chain {child} <- {parent}: the parent must come first")
        return self


def product_logit(parent: torch.Tensor, conditional: torch.Tensor) -> torch.Tensor:
    """logit(sigmoid(parent) * sigmoid(conditional)), computed in log space for stability."""
    log_p = F.logsigmoid(parent) + F.logsigmoid(conditional)
    return log_p - torch.log(-torch.expm1(log_p.clamp_max(-1e-6)))


class ESMM(MultiTaskModel):
    config: ESMMConfig

    def __init__(self, config: ESMMConfig) -> None:
        super().__init__(config)
        sizes = [self.in_dim, *config.expert_hidden]
        self.towers = nn.ModuleList(
            nn.Sequential(mlp(sizes, config.dropout), tower(sizes[-1], config, w))
            for w in config.head_widths()
        )

    def prior_rates(self) -> list[float]:
        """A chained task's own output is the conditional rate p(child | parent), started
        at most at 0.9: a saturated sigmoid would not learn (Taobao buys exceed carts)."""
        rates, tasks = self.config.base_rates, self.config.tasks
        return [
            rate
            if task not in self.config.chain
            else min(rate / max(rates[tasks.index(self.config.chain[task])], 1e-6), 0.9)
            for task, rate in zip(tasks, rates, strict=True)
        ]

    def task_logits(self, x: torch.Tensor, shared: torch.Tensor) -> torch.Tensor:
        return torch.cat([t(x) for t in self.towers], dim=1)

    def combine(self, logits: torch.Tensor) -> torch.Tensor:
        tasks = self.config.tasks
        heads: list[torch.Tensor] = []
        for i, task in enumerate(self.config.head_names()):
            own, parent = logits[:, i : i + 1], self.config.chain.get(task)
            heads.append(own if parent is None else product_logit(heads[tasks.index(parent)], own))
        return torch.cat(heads, dim=1)
