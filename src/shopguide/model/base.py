"""What every multi-task model shares: the config fields that rebuild its inputs, one fused
embedding lookup for the hashed ids, and the interface that training, fine-tuning and serving
rely on (`forward(user, item, category, dense)` -> logits (batch, tasks))."""

from __future__ import annotations

import itertools

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

# Multiplicative hashing spreads raw ids over the buckets; unknown ids need no vocabulary.
_HASH = 2654435761


class ModelConfig(BaseModel):
    """Fields every model needs; each model's config adds a `kind` and its own architecture."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tasks: tuple[str, ...]
    dense_features: tuple[str, ...]
    dense_mean: tuple[float, ...]
    dense_std: tuple[float, ...]
    user_buckets: int
    item_buckets: int
    category_buckets: int
    embedding_dim: int
    tower_hidden: tuple[int, ...]
    dropout: float


def mlp(sizes: list[int], dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, o in itertools.pairwise(sizes):
        layers += [nn.Linear(i, o), nn.ReLU(), nn.Dropout(dropout)]
    return nn.Sequential(*layers)


def tower(in_dim: int, config: ModelConfig) -> nn.Sequential:
    """A task head: an MLP ending in one logit."""
    return nn.Sequential(
        mlp([in_dim, *config.tower_hidden], config.dropout),
        nn.Linear(config.tower_hidden[-1] if config.tower_hidden else in_dim, 1),
    )


class Encoder(nn.Module):
    """Hashed user/item/category embeddings from one table (a single fused lookup per batch)
    next to log1p-standardised dense features."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.buckets = (config.user_buckets, config.item_buckets, config.category_buckets)
        self.embedding = nn.Embedding(sum(self.buckets), config.embedding_dim)
        nn.init.normal_(self.embedding.weight, std=0.01)
        offsets = torch.tensor([0, self.buckets[0], self.buckets[0] + self.buckets[1]])
        self.register_buffer("offsets", offsets, persistent=False)
        self.register_buffer("sizes", torch.tensor(self.buckets), persistent=False)
        self.register_buffer("dense_mean", torch.tensor(config.dense_mean, dtype=torch.float32))
        self.register_buffer("dense_std", torch.tensor(config.dense_std, dtype=torch.float32))
        self.out_dim = 3 * config.embedding_dim + len(config.dense_features)

    def forward(
        self, user: torch.Tensor, item: torch.Tensor, category: torch.Tensor, dense: torch.Tensor
    ) -> torch.Tensor:
        ids = torch.stack([user, item, category], dim=1)
        index = (ids * _HASH) % self.sizes + self.offsets
        dense = (torch.log1p(dense.clamp_min(0)) - self.dense_mean) / self.dense_std
        return torch.cat([self.embedding(index).flatten(1), dense], dim=1)


class MultiTaskModel(nn.Module):
    """Base of every model: `encode` turns raw inputs into the input representation, `heads`
    turns it into one logit per task. Splitting the two lets GradNorm weigh task gradients on
    the representation."""

    config: ModelConfig

    def __init__(self, config: ModelConfig, encoders: int = 1) -> None:
        super().__init__()
        self.config = config
        self.encoders = nn.ModuleList(Encoder(config) for _ in range(encoders))
        self.in_dim = self.encoders[0].out_dim

    def encode(
        self, user: torch.Tensor, item: torch.Tensor, category: torch.Tensor, dense: torch.Tensor
    ) -> torch.Tensor:
        """(batch, encoders * in_dim): one block per encoder (only the single-task model has
        more than one)."""
        return torch.cat([e(user, item, category, dense) for e in self.encoders], dim=1)

    def heads(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(
        self, user: torch.Tensor, item: torch.Tensor, category: torch.Tensor, dense: torch.Tensor
    ) -> torch.Tensor:
        """Logits of shape (batch, tasks). Ids are raw int64; dense features are raw counts."""
        return self.heads(self.encode(user, item, category, dense))

    def shared_modules(self) -> list[nn.Module]:
        """The representation layers (beyond the embeddings) that fine-tuning freezes."""
        return []

    def shared_parameters(self) -> list[nn.Parameter]:
        modules = [self.encoders, *self.shared_modules()]
        return [p for m in modules for p in m.parameters()]

    def embedding_parameters(self) -> list[nn.Parameter]:
        return [m.embedding.weight for m in self.modules() if isinstance(m, Encoder)]

    def penalty(self, logits: torch.Tensor) -> torch.Tensor:
        """A model's own regulariser added to the task losses (zero unless a model needs one)."""
        return logits.new_zeros(())
