"""Expert health of MMoE and PLE: gate shares that sum to one, an entropy that reads 0 for a
collapsed gate and near 1 for an even one, zero-activation shares that find a dead expert,
and the model card's section; and PLE's probed forward is its forward."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from shopguide.model.experts import expert_health, gate_summary, has_experts
from shopguide.model.tensors import Tensors
from shopguide.model.zoo import build, parse_config
from shopguide.model_card import render_model_card

CONFIG = {
    "tasks": ["cart", "buy"],
    "dense_features": ["a", "b", "c"],
    "dense_mean": [0.0, 0.0, 0.0],
    "dense_std": [1.0, 1.0, 1.0],
    "user_buckets": 5,
    "item_buckets": 5,
    "category_buckets": 5,
    "embedding_dim": 2,
    "num_experts": 3,
    "expert_hidden": [8],
    "tower_hidden": [4],
    "dropout": 0.0,
}


def _rows(n: int = 256) -> Tensors:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({c: rng.integers(0, 5, n) for c in ("user_id", "item_id", "category_id")})
    return Tensors.of(
        frame,
        dense=rng.standard_normal((n, 3)).astype(np.float32),
        labels=np.zeros((n, 2), np.float32),
        group=np.arange(n),
    )


def test_gate_summary_reads_collapse_and_evenness() -> None:
    even = gate_summary(torch.full((10, 4), 0.25))
    assert even["share"] == [0.25] * 4 and even["entropy"] == pytest.approx(1.0)
    collapsed = gate_summary(torch.tensor([[1.0, 0.0, 0.0, 0.0]] * 10))
    assert collapsed["share"][0] == 1.0 and collapsed["entropy"] == pytest.approx(0.0, abs=1e-4)


def test_mmoe_health_finds_a_collapsed_gate_and_a_dead_expert() -> None:
    model = build(parse_config({**CONFIG, "kind": "mmoe"}))
    assert has_experts(model)
    rows = _rows()
    health = expert_health(model, rows)
    for gate in health["gates"].values():
        assert sum(gate["share"]) == pytest.approx(1.0, abs=1e-3) and 0 < gate["entropy"] <= 1
    with torch.no_grad():
        model.gates[1].bias.copy_(torch.tensor([50.0, 0.0, 0.0]))  # buy: all on expert 0
        last = model.experts[2][-3]  # expert 2's last linear layer: outputs all below zero
        last.weight.zero_()
        last.bias.fill_(-1.0)
    health = expert_health(model, rows)
    assert health["gates"]["buy"]["share"][0] > 0.99 and health["gates"]["buy"]["entropy"] < 0.01
    assert health["min_gate_entropy"] == health["gates"]["buy"]["entropy"]
    assert health["zero_activation_share"]["expert_2"] == 1.0
    assert health["max_zero_activation_share"] == 1.0
    card = render_model_card({"metrics": {"expert_health": health}}, {"kind": "mmoe"})
    assert "## Expert health" in card and "| buy | 1.00 / 0.00 / 0.00 |" in card


def test_ple_probes_every_level_and_keep_its_outputs() -> None:
    model = build(parse_config({**CONFIG, "kind": "ple", "levels": 2, "task_experts": 1}))
    model.eval()
    rows = _rows()
    health = expert_health(model, rows)
    # level 0: each task's gate and the shared gate; level 1 (last): the tasks' gates only
    assert set(health["gates"]) == {"l0.cart", "l0.buy", "l0.shared", "l1.cart", "l1.buy"}
    assert len(health["gates"]["l0.cart"]["share"]) == 1 + 3  # own expert + shared ones
    assert len(health["gates"]["l0.shared"]["share"]) == 2 * 1 + 3
    assert len(health["zero_activation_share"]) == 2 * (2 * 1 + 3)
    x = model.encode(*rows.inputs())
    gates, _ = model.expert_probes(x)
    entropy = -(gates["l1.buy"] * gates["l1.buy"].log()).sum(1).mean() / math.log(4)
    assert health["gates"]["l1.buy"]["entropy"] == pytest.approx(float(entropy), abs=1e-4)
    bottom = {k: v for k, v in CONFIG.items() if k != "num_experts"}
    assert not has_experts(build(parse_config({**bottom, "kind": "shared_bottom"})))
