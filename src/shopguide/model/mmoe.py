"""Multi-gate Mixture-of-Experts (Ma et al., KDD 2018) over hashed id embeddings and dense features.

The "shared" part (embeddings, dense projection, experts) is what fine-tuning freezes; gates
and towers are per task.
"""

from __future__ import annotations

import itertools

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

# Multiplicative hashing spreads raw ids over the buckets; unknown ids need no vocabulary.
_HASH = 2654435761


class MMoEConfig(BaseModel):
    """Everything needed to rebuild the network and its inputs; saved as JSON beside the weights."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tasks: tuple[str, ...]
    dense_features: tuple[str, ...]
    dense_mean: tuple[float, ...]
    dense_std: tuple[float, ...]
    user_buckets: int
    item_buckets: int
    category_buckets: int
    embedding_dim: int
    num_experts: int
    expert_hidden: tuple[int, ...]
    tower_hidden: tuple[int, ...]
    dropout: float


def _mlp(sizes: list[int], dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, o in itertools.pairwise(sizes):
        layers += [nn.Linear(i, o), nn.ReLU(), nn.Dropout(dropout)]
    return nn.Sequential(*layers)


class MMoE(nn.Module):
    def __init__(self, config: MMoEConfig) -> None:
        super().__init__()
        self.config = config
        d = config.embedding_dim
        self.user_emb = nn.Embedding(config.user_buckets, d)
        self.item_emb = nn.Embedding(config.item_buckets, d)
        self.category_emb = nn.Embedding(config.category_buckets, d)
        for emb in (self.user_emb, self.item_emb, self.category_emb):
            nn.init.normal_(emb.weight, std=0.01)
        self.register_buffer("dense_mean", torch.tensor(config.dense_mean, dtype=torch.float32))
        self.register_buffer("dense_std", torch.tensor(config.dense_std, dtype=torch.float32))
        in_dim = 3 * d + len(config.dense_features)
        sizes = [in_dim, *config.expert_hidden]
        self.experts = nn.ModuleList(_mlp(sizes, config.dropout) for _ in range(config.num_experts))
        self.gates = nn.ModuleList(nn.Linear(in_dim, config.num_experts) for _ in config.tasks)
        top = config.expert_hidden[-1]
        self.towers = nn.ModuleList(
            nn.Sequential(
                _mlp([top, *config.tower_hidden], config.dropout),
                nn.Linear(config.tower_hidden[-1], 1),
            )
            for _ in config.tasks
        )

    def shared_parameters(self) -> list[nn.Parameter]:
        shared = [self.user_emb, self.item_emb, self.category_emb, self.experts]
        return [p for m in shared for p in m.parameters()]

    def embedding_parameters(self) -> list[nn.Parameter]:
        return [self.user_emb.weight, self.item_emb.weight, self.category_emb.weight]

    @staticmethod
    def bucket(ids: torch.Tensor, buckets: int) -> torch.Tensor:
        return (ids * _HASH) % buckets

    def forward(
        self, user: torch.Tensor, item: torch.Tensor, category: torch.Tensor, dense: torch.Tensor
    ) -> torch.Tensor:
        """Logits of shape (batch, tasks). Ids are raw int64; dense features are raw counts."""
        c = self.config
        x = torch.cat(
            [
                self.user_emb(self.bucket(user, c.user_buckets)),
                self.item_emb(self.bucket(item, c.item_buckets)),
                self.category_emb(self.bucket(category, c.category_buckets)),
                (torch.log1p(dense.clamp_min(0)) - self.dense_mean) / self.dense_std,
            ],
            dim=1,
        )
        experts = torch.stack([e(x) for e in self.experts], dim=1)  # (B, E, H)
        logits = []
        for gate, tower in zip(self.gates, self.towers, strict=True):
            weights = torch.softmax(gate(x), dim=1).unsqueeze(2)  # (B, E, 1)
            logits.append(tower((weights * experts).sum(dim=1)))
        return torch.cat(logits, dim=1)
