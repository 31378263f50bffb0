"""Adversarial domain adaptation (DANN, Ganin & Lempitsky, ICML 2015): a domain classifier
tells old-category exposures from new-category ones by the model's shared representation; a
gradient-reversal layer between them turns the classifier's gradient around, so the layers
below the model's `shared_representation` (MMoE: embeddings and experts; other models: the
encoder) learn a representation on which the two domains look alike. The new categories' side
uses all their train exposures, labelled or not; the task loss uses the labelled ones only."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from shopguide.config import Params
from shopguide.model.base import MultiTaskModel
from shopguide.model.tensors import Tensors
from shopguide.transfer.common import Outcome, fine_tune, tensors
from shopguide.transfer.data import TransferData

HIDDEN = 32


class GradientReversal(torch.autograd.Function):
    """Identity forward; the gradient times -weight backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: float) -> torch.Tensor:
        ctx.weight = weight
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.weight * grad, None


def reverse_gradient(x: torch.Tensor, weight: float) -> torch.Tensor:
    return GradientReversal.apply(x, weight)


class DomainLoss:
    """Each call draws half a batch of old and half of new (unlabelled) exposures and returns
    the domain classifier's loss through the gradient reversal."""

    def __init__(
        self,
        model: MultiTaskModel,
        old: Tensors,
        new: Tensors,
        weight: float,
        batch_size: int,
        seed: int,
        device: str = "cpu",
    ) -> None:
        self.old, self.new, self.weight = old, new, weight
        self.half = max(batch_size // 2, 1)
        self.generator = torch.Generator().manual_seed(seed)
        width = model.shared_representation(model.encode(*old.take(torch.arange(1)).inputs()))
        self.classifier = nn.Sequential(
            nn.Linear(width.shape[1], HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, 1)
        ).to(device)
        self.domain = torch.cat([torch.zeros(self.half), torch.ones(self.half)]).to(device)

    def _draw(self, data: Tensors, device: torch.device) -> tuple[torch.Tensor, ...]:
        index = torch.randint(len(data), (self.half,), generator=self.generator)
        return tuple(t.to(device) for t in data.take(index).inputs())

    def __call__(self, model: MultiTaskModel, batch: Tensors, rep: torch.Tensor) -> torch.Tensor:
        inputs = zip(
            self._draw(self.old, rep.device), self._draw(self.new, rep.device), strict=True
        )
        both = [torch.cat(pair) for pair in inputs]
        shared = model.shared_representation(model.encode(*both))
        logits = self.classifier(reverse_gradient(shared.float(), self.weight)).squeeze(1)
        return F.binary_cross_entropy_with_logits(logits, self.domain.to(rep.device))


def adapt(model: MultiTaskModel, data: TransferData, params: Params) -> Outcome:
    f, t = params.finetune, params.train
    device = "cuda" if t.device != "cpu" and torch.cuda.is_available() else "cpu"
    domain = DomainLoss(
        model,
        tensors(model, data.old),
        tensors(model, data.unlabelled),
        f.adversarial_weight,
        t.batch_size,
        t.seed,
        device,
    )
    return fine_tune(
        model,
        data,
        params,
        [*model.parameters(), *domain.classifier.parameters()],
        f.full_learning_rate,
        "fine-tune (adversarial)",
        extra_loss=domain,
    )
