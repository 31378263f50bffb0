"""Expert health of the mixture-of-experts models (MMoE, PLE): how each gate spreads its weight
over its experts, and how often each expert's outputs are zero. A collapsed gate (one expert
takes nearly all the weight) or a dead expert (outputs almost always zero) is capacity the
model pays for and does not use; an industrial report found more than 90% zero activations in
some experts. Reported in the training metrics, the evaluation and the model card."""

from __future__ import annotations

import math

import torch

from shopguide.model.base import MultiTaskModel
from shopguide.model.tensors import Tensors

# An activation at most this far from zero counts as zero (the experts end in a ReLU).
ZERO = 1e-6
PROBE_ROWS = 4096  # rows the figures are measured on (the first ones of the set given)


def gate_summary(weights: torch.Tensor) -> dict:
    """One gate's softmax weights (rows, experts): the mean share of each expert, and the
    mean entropy over log(experts) (1: even, 0: one expert takes everything)."""
    experts = weights.shape[1]
    entropy = -(weights * weights.clamp_min(1e-12).log()).sum(dim=1).mean()
    return {
        "share": [round(float(s), 4) for s in weights.mean(dim=0)],
        "entropy": round(float(entropy) / math.log(experts), 4) if experts > 1 else 0.0,
    }


def has_experts(model: MultiTaskModel) -> bool:
    return hasattr(model, "expert_probes")


def expert_health(model: MultiTaskModel, tensors: Tensors) -> dict:
    """Gate shares and entropies and each expert's share of zero activations, on the first
    `PROBE_ROWS` rows of `tensors` (a model with experts: `has_experts`)."""
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        x = model.encode(*tensors.rows(slice(0, PROBE_ROWS)).inputs())
        gates, experts = model.expert_probes(x)
    model.train(was_training)
    zero = {
        name: round(float((out.abs() <= ZERO).float().mean()), 4) for name, out in experts.items()
    }
    summaries = {name: gate_summary(w.float()) for name, w in gates.items()}
    return {
        "rows": int(x.shape[0]),
        "gates": summaries,
        "zero_activation_share": zero,
        "min_gate_entropy": min(g["entropy"] for g in summaries.values()),
        "max_zero_activation_share": max(zero.values()),
    }
