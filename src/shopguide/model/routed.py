"""Parameter isolation for fine-tuning (`finetune.isolate`): the fine-tuned copy of a model
scores only the new categories' rows, every other row keeps the model it was fine-tuned from.
The old categories' scores are then the base model's to the bit, so fine-tuning cannot make
them forget (progressive-network style isolation), at the price of one more model's weights
per fine-tuning run; a full retrain (`shopguide train`) folds everything back into one model.

A routed model has the interface every consumer of a `MultiTaskModel` reads (`config`,
`outputs`, `forward`), and is saved as one `config.json` (kind `routed`) and one weights file,
like any other model."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, model_validator
from torch import nn

from shopguide.config import FinetuneParams
from shopguide.model.base import ModelConfig, MultiTaskModel
from shopguide.model.zoo import AnyConfig, build


class CategoryRule(BaseModel):
    """Which categories a route scores: `ids` when given, else id % modulo == remainder (the
    same rule as `finetune.new_category_ids` / `new_category_modulo` / `_remainder`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ids: tuple[int, ...] = ()
    modulo: PositiveInt = 1
    remainder: int = 0

    @classmethod
    def of(cls, params: FinetuneParams) -> CategoryRule:
        if params.new_category_ids:
            return cls(ids=params.new_category_ids)
        return cls(modulo=params.new_category_modulo, remainder=params.new_category_remainder)


class Route(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    rule: CategoryRule
    model: AnyConfig


class RoutedConfig(BaseModel):
    """The saved form: the base model's config and each route's (a later route wins where
    rules overlap, so a category fine-tuned again is scored by its latest copy)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["routed"] = "routed"
    base: AnyConfig
    routes: tuple[Route, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _same_interface(self) -> RoutedConfig:
        want = _interface(self.base)
        for i, route in enumerate(self.routes):
            if _interface(route.model) != want:
                raise ValueError(
                    f"routes[{i}] has other tasks, heads, dense features or sequence than the "
                    "base model"
                )
        return self


def _interface(config: ModelConfig) -> tuple:
    return (
        config.tasks,
        config.head_names(),
        config.head_widths(),
        config.dense_features,
        config.sequence_length,
    )


Routes = list[tuple[CategoryRule, MultiTaskModel]]


class Routed(nn.Module):
    """`base` for every row, overwritten by each route's model on the rows its rule selects
    (a route's model runs on its rows only: one route of a third of the rows costs a third
    more than one model)."""

    def __init__(self, base: MultiTaskModel, routes: Routes) -> None:
        super().__init__()
        self.base = base
        self.routed = nn.ModuleList(m for _, m in routes)
        self.rules = [r for r, _ in routes]
        self.config = base.config  # what consumers read: tasks, heads, dense features
        for i, rule in enumerate(self.rules):
            ids = torch.tensor(rule.ids, dtype=torch.int64)
            self.register_buffer(f"ids_{i}", ids, persistent=False)
        self.routing = RoutedConfig(
            base=base.config, routes=tuple(Route(rule=r, model=m.config) for r, m in routes)
        )

    def members(self, category: torch.Tensor, i: int) -> torch.Tensor:
        """(batch,) bool: the rows route `i` scores."""
        rule = self.rules[i]
        if rule.ids:
            return torch.isin(category, getattr(self, f"ids_{i}"))
        return torch.remainder(category, rule.modulo) == rule.remainder

    def outputs(self, *inputs: torch.Tensor | None) -> torch.Tensor:
        """Every head's outputs from the raw inputs (`MultiTaskModel.forward`'s)."""
        out = self.base.outputs(*inputs)
        category = inputs[2]
        for i, model in enumerate(self.routed):
            rows = self.members(category, i).nonzero().squeeze(1)
            part = (t.index_select(0, rows) if t is not None else None for t in inputs)
            out = out.index_copy(0, rows, model.outputs(*part))
        return out

    def forward(self, *inputs: torch.Tensor | None) -> torch.Tensor:
        return self.outputs(*inputs)[:, : len(self.config.tasks)]


AnyModel = MultiTaskModel | Routed


def split_routes(model: AnyModel) -> tuple[MultiTaskModel, Routes]:
    """(the model that scores every unrouted row, the routes): `model` itself and none for a
    plain model."""
    if isinstance(model, Routed):
        return model.base, list(zip(model.rules, model.routed, strict=True))
    return model, []


def build_routed(config: RoutedConfig) -> Routed:
    return Routed(build(config.base), [(r.rule, build(r.model)) for r in config.routes])
