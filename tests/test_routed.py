"""Parameter isolation (`finetune.isolate`, shopguide.model.routed): a routed model scores each
row with the model its category's route names, round-trips through its saved files, traces
for serving, and refuses a config whose routes do not fit the base model."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from shopguide.errors import ShopguideError
from shopguide.model.mmoe import MMoE, MMoEConfig
from shopguide.model.routed import CategoryRule, Routed
from shopguide.model.store import CONFIG, load_model, save_model
from shopguide.model_card import render_model_card
from shopguide.serving.predictor import compiled

CONFIG_FIELDS = {
    "tasks": ("cart", "fav", "buy"),
    "dense_features": ("u_pv", "i_pv"),
    "dense_mean": (0.5, 0.5),
    "dense_std": (1.0, 1.0),
    "user_buckets": 101,
    "item_buckets": 103,
    "category_buckets": 107,
    "embedding_dim": 4,
    "tower_hidden": (8,),
    "dropout": 0.0,
    "num_experts": 2,
    "expert_hidden": (8,),
    "base_rates": (0.01, 0.005, 0.01),
    "sequence_length": 3,
    "sequence_encoder": "din",
}


def _shifted(model: MMoE, by: float) -> MMoE:
    other = copy.deepcopy(model)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(by)
    return other.eval()


@pytest.fixture
def parts() -> tuple[MMoE, MMoE, MMoE]:
    torch.manual_seed(0)
    base = MMoE(MMoEConfig(**CONFIG_FIELDS)).eval()
    return base, _shifted(base, 0.1), _shifted(base, -0.2)


def _batch(n: int = 300) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(1)
    ids = [torch.randint(0, 10_000, (n,), generator=g) for _ in range(3)]
    sequence = torch.stack(
        [
            torch.randint(0, 10_000, (n, 3), generator=g),
            torch.randint(0, 10_000, (n, 3), generator=g),
            torch.randint(0, 5, (n, 3), generator=g),
            torch.randint(0, 86_400, (n, 3), generator=g),
        ],
        dim=-1,
    )
    return (*ids, torch.rand(n, 2, generator=g) * 5, sequence)


def test_each_row_is_scored_by_its_routes_model(parts: tuple[MMoE, MMoE, MMoE]) -> None:
    base, first, second = parts
    rules = [CategoryRule(modulo=3, remainder=0), CategoryRule(ids=(3, 6, 7))]
    routed = Routed(base, [(rules[0], first), (rules[1], second)]).eval()
    x = _batch()
    category = x[2]
    category[:6] = torch.tensor([3, 6, 7, 9, 1, 2])  # 3 and 6 are in both rules: the later wins
    out = routed(*x)
    in_second = torch.isin(category, torch.tensor([3, 6, 7]))
    in_first = (category % 3 == 0) & ~in_second
    rest = ~(in_first | in_second)
    assert in_first.any() and in_second.any() and rest.any()
    assert torch.equal(out[rest], base(*x)[rest])
    # a route's rows are scored in a batch of their own: equal up to float rounding
    assert torch.allclose(out[in_first], first(*x)[in_first], rtol=0, atol=1e-6)
    assert torch.allclose(out[in_second], second(*x)[in_second], rtol=0, atol=1e-6)
    assert not torch.equal(out, base(*x))


def test_a_batch_without_a_routes_rows_is_the_base_models(parts: tuple[MMoE, MMoE, MMoE]) -> None:
    """No row of the batch is in the route (the old categories' slice): the base model scores
    them all, with a per-category task layer too (whose reshape an empty part once broke)."""
    torch.manual_seed(0)
    base = MMoE(MMoEConfig(**CONFIG_FIELDS, category_task_buckets=13)).eval()
    routed = Routed(base, [(CategoryRule(ids=(10_001,)), _shifted(base, 0.1))]).eval()
    x = _batch()
    assert not torch.isin(x[2], torch.tensor([10_001])).any()
    assert torch.equal(routed(*x), base(*x))
    empty = tuple(t[:0] for t in x)
    assert base(*empty).shape == (0, 3)


def test_routed_model_round_trips_and_traces(
    parts: tuple[MMoE, MMoE, MMoE], tmp_path: Path
) -> None:
    base, first, _ = parts
    routed = Routed(base, [(CategoryRule(ids=(3, 5)), first)]).eval()
    save_model(routed, tmp_path / "m")
    config = json.loads((tmp_path / "m" / CONFIG).read_text())
    assert config["kind"] == "routed" and config["base"]["kind"] == "mmoe"
    assert config["routes"][0]["rule"]["ids"] == [3, 5]
    loaded = load_model(tmp_path / "m")
    x = _batch()
    x[2][:4] = torch.tensor([3, 5, 5, 4])
    assert isinstance(loaded, Routed) and torch.equal(loaded(*x), routed(*x))
    assert loaded.config == base.config  # what serving and evaluation read
    net, traced = compiled(loaded)
    assert traced and torch.equal(net(*x), routed(*x))
    none_routed = tuple(t[4:5] for t in x)  # category 4: no row for the route
    assert torch.equal(net(*none_routed), base(*none_routed))
    card = render_model_card({"version": "v1"}, config)
    assert "mmoe with 1 fine-tuned copy (category_id in [3, 5])" in card
    assert "tasks cart, fav, buy" in card


def test_a_route_that_does_not_fit_the_base_is_a_clear_error(
    parts: tuple[MMoE, MMoE, MMoE], tmp_path: Path
) -> None:
    base, first, _ = parts
    save_model(Routed(base, [(CategoryRule(), first)]), tmp_path / "m")
    path = tmp_path / "m" / CONFIG
    config = json.loads(path.read_text())
    config["routes"][0]["model"]["tasks"] = ["cart", "fav", "sales"]
    path.write_text(json.dumps(config))
    with pytest.raises(
        ShopguideError, match=r"(?s)config\.json: invalid model config.*routes\[0\] has other tasks"
    ):
        load_model(tmp_path / "m")
    path.write_text("[1, 2]")
    with pytest.raises(ShopguideError, match=r"config\.json: invalid model config: not an object"):
        load_model(tmp_path / "m")
