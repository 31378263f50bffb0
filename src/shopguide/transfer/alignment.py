"""Feature distribution alignment, the non-adversarial alternatives to DANN: a penalty on the
distance between the old and the new categories' distributions of the model's
`shared_representation`, so the layers below it (MMoE: embeddings and experts) learn features
on which what the old categories taught still holds. `mmd`: the squared maximum mean
discrepancy (unbiased estimate) under a sum of Gaussian kernels whose bandwidths bracket the
batch's median distance (DAN, Long et al., ICML 2015); `coral`: the squared Frobenius
distance between the two domains' feature covariances over 4 d^2 (Deep CORAL, Sun and Saenko,
ECCV 2016 workshops).
Both need no extra parameters and no labels on the new side."""

from __future__ import annotations

from collections.abc import Callable

import torch

from shopguide.config import Params
from shopguide.model.base import MultiTaskModel
from shopguide.model.tensors import Tensors
from shopguide.transfer.common import Outcome, fine_tune_all
from shopguide.transfer.data import TransferData
from shopguide.transfer.domains import DomainSampler

# Kernel bandwidths as multiples of the median squared distance (DAN's family of kernels).
BANDWIDTHS = (0.25, 0.5, 1.0, 2.0, 4.0)


def mmd(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Unbiased estimate of MMD^2 between two samples (rows, at least two each) under the
    multi-bandwidth kernel: within-sample pairs exclude each row with itself, so two samples
    of one distribution score about 0 (either sign), not a positive floor of order 1/rows."""
    both = torch.cat([source, target])
    distances = torch.cdist(both, both).pow(2)
    scale = distances.detach().median().clamp_min(1e-6)
    kernel = sum(torch.exp(-distances / (scale * b)) for b in BANDWIDTHS)
    n, m = len(source), len(target)

    def within(k: torch.Tensor, size: int) -> torch.Tensor:
        return (k.sum() - k.diagonal().sum()) / (size * (size - 1))

    return within(kernel[:n, :n], n) + within(kernel[n:, n:], m) - 2 * kernel[:n, n:].mean()


def coral(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """||cov(source) - cov(target)||_F^2 / (4 d^2)."""
    d = source.shape[1]
    return (torch.cov(source.T) - torch.cov(target.T)).pow(2).sum() / (4 * d * d)


DISTANCES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "mmd": mmd,
    "coral": coral,
}


class AlignmentLoss:
    """Each call draws half a batch of each domain and returns weight * distance."""

    def __init__(self, domains: DomainSampler, distance: str, weight: float) -> None:
        self.domains, self.distance, self.weight = domains, DISTANCES[distance], weight

    def __call__(self, model: MultiTaskModel, batch: Tensors, rep: torch.Tensor) -> torch.Tensor:
        shared = self.domains.shared(model, rep.device)
        half = self.domains.half
        return self.weight * self.distance(shared[:half], shared[half:])


def adapter(distance: str) -> Callable[[MultiTaskModel, TransferData, Params], Outcome]:
    """The strategy that fine-tunes every layer with the `distance` penalty."""

    def adapt(model: MultiTaskModel, data: TransferData, params: Params) -> Outcome:
        f = params.finetune
        weight = {"mmd": f.mmd_weight, "coral": f.coral_weight}[distance]
        domains = DomainSampler.of(model, data, params)
        outcome = fine_tune_all(
            model,
            data,
            params,
            f"fine-tune ({distance.upper()})",
            extra_loss=AlignmentLoss(domains, distance, weight),
        )
        outcome.samples += domains.drawn
        return outcome

    return adapt
