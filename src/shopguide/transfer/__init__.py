"""Transfer to new product categories (`finetune.strategy` in params.yaml): one module per
strategy, each adapting a pre-trained model in place through the project's training engine,
and `auto`, which runs each of `finetune.auto_strategies` from the same pre-trained weights and
keeps the one with the best mean AUC on the validation slice (the latest labelled
new-category exposures by time) among those whose AUC on the old categories' validation slice
drops by at most the gate's `max_old_category_drop`, so `auto` never picks what the gate's
forgetting check would refuse for want of trying. With `finetune.isolate` the strategy adapts a
copy, routed to the new categories only (shopguide.model.routed): the old categories keep
their scores exactly."""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from shopguide.config import FinetuneParams, Params
from shopguide.errors import ShopguideError
from shopguide.metrics import mean_metric
from shopguide.model.base import MultiTaskModel
from shopguide.model.routed import AnyModel, CategoryRule, Routed, split_routes
from shopguide.transfer import adversarial, alignment, coldstart, frozen, l2sp, meta
from shopguide.transfer.common import Outcome, frame_metrics
from shopguide.transfer.data import TransferData, transfer_data, user_budget

log = logging.getLogger(__name__)

STRATEGIES: dict[str, Callable[[MultiTaskModel, TransferData, Params], Outcome]] = {
    "frozen": frozen.adapt,
    "l2sp": l2sp.adapt,
    "adversarial": adversarial.adapt,
    "coldstart": coldstart.adapt,
    "mmd": alignment.adapter("mmd"),
    "coral": alignment.adapter("coral"),
    "meta": meta.adapt,
}

__all__ = [
    "STRATEGIES",
    "Adapted",
    "TransferData",
    "adapt",
    "auc_change",
    "choose",
    "largest_drop",
    "transfer_data",
    "user_budget",
]


@dataclass
class Adapted:
    model: AnyModel  # what to save and serve
    tuned: MultiTaskModel  # the network the strategy trained (in `model`, routed or not)
    strategy: str  # the strategy that made `tuned` (auto's winner)
    outcome: Outcome
    validation: dict[str, float] = field(default_factory=dict)  # strategy -> mean AUC
    # strategy -> largest per-task AUC drop on the old categories' validation slice
    old_validation_drop: dict[str, float] = field(default_factory=dict)


def auc_change(before: dict, after: dict) -> dict[str, float | None]:
    """Per task, AUC after minus before (task metrics); None where either has no AUC."""
    return {
        t: None
        if after[t]["auc"] is None or before[t]["auc"] is None
        else after[t]["auc"] - before[t]["auc"]
        for t in before
    }


def largest_drop(before: dict, after: dict) -> float:
    """The largest per-task AUC drop from `before` to `after` (task metrics); 0 when none."""
    return max([0.0, *(-c for c in auc_change(before, after).values() if c is not None)])


def choose(validation: dict[str, float], drops: dict[str, float], tolerance: float) -> str:
    """`auto`'s pick: the best new-category validation score among the strategies that do
    not forget (old-category validation drop within the gate's tolerance); when every one
    forgets, the one that forgets least."""
    kept = [n for n in validation if drops[n] <= tolerance]
    if not kept:
        log.warning("auto: every strategy forgets (drops %s > %s)", drops, tolerance)
        return min(drops, key=drops.__getitem__)
    return max(kept, key=validation.__getitem__)


def _trainee(
    model: AnyModel, finetune: FinetuneParams
) -> tuple[MultiTaskModel, Callable[[MultiTaskModel], AnyModel]]:
    """The network a strategy trains, and how the candidate is made from it.

    With `finetune.isolate`: a copy of what scores the new categories now (the route with the
    same rule, so fine-tuning them again continues from it and replaces it; else the base
    model), routed to them. Without: `model` itself, adapted in place; a routed model cannot
    be, since its routes would go on scoring their categories."""
    base, routes = split_routes(model)
    if not finetune.isolate:
        if routes:
            raise ShopguideError(
                f"the model to fine-tune holds {len(routes)} fine-tuned cop"
                f"{'y' if len(routes) == 1 else 'ies'} for category routes; with "
                "finetune.isolate: false only its base model would adapt. Set finetune.isolate: "
                "true, or retrain one model on all categories (shopguide train)"
            )
        return base, lambda tuned: tuned
    rule = CategoryRule.of(finetune)
    earlier = [m for r, m in routes if r == rule]
    others = [(r, m) for r, m in routes if r != rule]
    return copy.deepcopy(earlier[-1] if earlier else base), lambda tuned: Routed(
        base, [*others, (rule, tuned)]
    )


def adapt(
    model: AnyModel, data: TransferData, params: Params, strategy: str | None = None
) -> Adapted:
    """Adapt `model` with `strategy` (default `finetune.strategy`): in place, or with
    `finetune.isolate` a copy routed to the new categories (`_trainee`). `auto` leaves `model`
    untouched and returns the winner's copy."""
    strategy = strategy or params.finetune.strategy
    if strategy != "auto":
        before = frame_metrics(model, data.old_valid)
        tuned, candidate = _trainee(model, params.finetune)
        outcome = STRATEGIES[strategy](tuned, data, params)
        model = candidate(tuned)
        score = mean_metric(outcome.result.best_metrics, params.train.selection)
        drop = largest_drop(before, frame_metrics(model, data.old_valid))
        return Adapted(model, tuned, strategy, outcome, {strategy: score}, {strategy: drop})
    tried = {
        name: adapt(copy.deepcopy(model), data, params, name)
        for name in params.finetune.auto_strategies
    }
    validation = {name: a.validation[name] for name, a in tried.items()}
    drops = {name: a.old_validation_drop[name] for name, a in tried.items()}
    best = choose(validation, drops, params.gate.max_old_category_drop)
    log.info(
        "auto: validation mean AUC %s, old-category drop %s; keeping %s", validation, drops, best
    )
    return Adapted(
        tried[best].model, tried[best].tuned, best, tried[best].outcome, validation, drops
    )
