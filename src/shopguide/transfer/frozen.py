"""Frozen shared layers: embeddings and shared representation layers (experts) keep their
pre-trained weights; only the task-specific gates and towers adapt."""

from __future__ import annotations

from shopguide.config import Params
from shopguide.model.base import MultiTaskModel
from shopguide.transfer.common import Outcome, fine_tune
from shopguide.transfer.data import TransferData


def adapt(model: MultiTaskModel, data: TransferData, params: Params) -> Outcome:
    shared = {id(p) for p in model.shared_parameters()}
    trainable = [p for p in model.parameters() if id(p) not in shared]
    return fine_tune(
        model, data, params, trainable, params.finetune.learning_rate, "fine-tune (frozen)"
    )
