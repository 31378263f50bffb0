"""L2-SP (Li et al., ICML 2018): every layer adapts, at `finetune.full_learning_rate`, under
`l2sp_lambda * ||theta - theta_pretrained||^2`, which keeps the weights near the pre-trained
ones instead of near zero."""

from __future__ import annotations

import torch

from shopguide.config import Params
from shopguide.model.base import MultiTaskModel
from shopguide.model.tensors import Tensors
from shopguide.transfer.common import Outcome, fine_tune_all
from shopguide.transfer.data import TransferData


class L2SP:
    """The penalty as the training engine's extra loss, anchored at the weights it was made
    from."""

    def __init__(self, model: MultiTaskModel, weight: float) -> None:
        self.params = list(model.parameters())
        self.anchor = [p.detach().clone() for p in self.params]
        self.weight = weight

    def distance(self) -> torch.Tensor:
        """||theta - theta_pretrained||^2 over every parameter."""
        if self.anchor[0].device != self.params[0].device:  # once, where training moved them
            self.anchor = [a.to(p.device) for p, a in zip(self.params, self.anchor, strict=True)]
        return sum(((p - a) ** 2).sum() for p, a in zip(self.params, self.anchor, strict=True))

    def __call__(self, model: MultiTaskModel, batch: Tensors, rep: torch.Tensor) -> torch.Tensor:
        return self.weight * self.distance()


def adapt(model: MultiTaskModel, data: TransferData, params: Params) -> Outcome:
    weight = params.finetune.l2sp_lambda
    return fine_tune_all(
        model, data, params, "fine-tune (L2-SP)", extra_loss=L2SP(model, weight) if weight else None
    )
