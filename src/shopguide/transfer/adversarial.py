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
from shopguide.transfer.common import Outcome, fine_tune_all
from shopguide.transfer.data import TransferData
from shopguide.transfer.domains import DomainSampler

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
        domains: DomainSampler,
        weight: float,
        device: str = "cpu",
    ) -> None:
        self.domains, self.weight = domains, weight
        self.classifier = nn.Sequential(
            nn.Linear(model.shared_width(), HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, 1)
        ).to(device)
        half = domains.half
        self.domain = torch.cat([torch.zeros(half), torch.ones(half)]).to(device)

    def __call__(self, model: MultiTaskModel, batch: Tensors, rep: torch.Tensor) -> torch.Tensor:
        shared = self.domains.shared(model, rep.device)
        logits = self.classifier(reverse_gradient(shared, self.weight)).squeeze(1)
        return F.binary_cross_entropy_with_logits(logits, self.domain.to(rep.device))


def adapt(model: MultiTaskModel, data: TransferData, params: Params) -> Outcome:
    device = "cuda" if params.train.device != "cpu" and torch.cuda.is_available() else "cpu"
    domains = DomainSampler.of(model, data, params)
    domain = DomainLoss(model, domains, params.finetune.adversarial_weight, device)
    outcome = fine_tune_all(
        model,
        data,
        params,
        "fine-tune (adversarial)",
        extra_loss=domain,
        extra_parameters=list(domain.classifier.parameters()),
    )
    outcome.samples += domains.drawn
    return outcome
