"""Batches of both domains for the strategies that compare them (adversarial, MMD, CORAL):
half a batch of old-category exposures and half of new-category ones (labelled or not), drawn
from their own generator so the task batches' order is unchanged."""

from __future__ import annotations

import torch

from shopguide.config import Params
from shopguide.model.base import MultiTaskModel
from shopguide.model.tensors import Tensors
from shopguide.transfer.common import tensors
from shopguide.transfer.data import TransferData


class DomainSampler:
    def __init__(self, old: Tensors, new: Tensors, batch_size: int, seed: int) -> None:
        self.old, self.new = old, new
        self.half = max(batch_size // 2, 1)
        self.generator = torch.Generator().manual_seed(seed)
        self.drawn = 0  # rows drawn so far: the strategy's extra compute

    @classmethod
    def of(cls, model: MultiTaskModel, data: TransferData, params: Params) -> DomainSampler:
        """Old-category train rows against the new categories' unlabelled ones, a training
        batch at a time."""
        t = params.train
        return cls(tensors(model, data.old), tensors(model, data.unlabelled), t.batch_size, t.seed)

    def _draw(self, data: Tensors, device: torch.device) -> tuple[torch.Tensor, ...]:
        index = torch.randint(len(data), (self.half,), generator=self.generator)
        self.drawn += self.half
        return tuple(t.to(device) for t in data.take(index).inputs())

    def shared(self, model: MultiTaskModel, device: torch.device) -> torch.Tensor:
        """(2 * half, width): the model's `shared_representation` of `half` old rows, then
        `half` new ones, in one forward pass."""
        pairs = zip(self._draw(self.old, device), self._draw(self.new, device), strict=True)
        return model.shared_representation(model.encode(*(torch.cat(p) for p in pairs))).float()
