"""Meta-learned initialisation for new categories (Reptile, Nichol et al. 2018: first-order
MAML). Each old category is a task: from the current weights, a few steps on one category's
exposures, then the weights move part of the way toward where those steps ended. Repeated over
many categories, that finds weights from which a few steps fit any one category well, rather
than weights that fit the old categories' mixture. The new categories are then fine-tuned from
there as every layer adapts (as L2-SP does, without its pull)."""

from __future__ import annotations

import logging

import numpy as np
import torch

from shopguide.config import Params
from shopguide.logs import track
from shopguide.model.base import MultiTaskModel
from shopguide.model.tasks import task_losses
from shopguide.transfer.common import Outcome, fine_tune_all, tensors
from shopguide.transfer.data import TransferData

log = logging.getLogger(__name__)

MIN_ROWS = 32  # an old category with fewer exposures is not a meta-task


def meta_initialise(model: MultiTaskModel, data: TransferData, params: Params) -> tuple[int, int]:
    """Reptile over the old categories with at least MIN_ROWS train exposures, in place;
    returns how many categories it drew from and how many rows its inner steps processed.
    Categories are drawn uniformly (the new ones are any categories, not the busiest); each
    inner step is a batch drawn from the category with replacement, trained with the pointwise
    task losses by Adam."""
    f, t = params.finetune, params.train
    old = data.old
    sizes = old["category_id"].value_counts()
    categories = sizes[sizes >= MIN_ROWS].index.to_numpy()
    if not len(categories):
        log.warning("meta: no old category has %d exposures; initialisation unchanged", MIN_ROWS)
        return 0, 0
    rows_of = {c: np.flatnonzero(old["category_id"].to_numpy() == c) for c in categories}
    everything = tensors(model, old)
    heads, aux = len(model.config.tasks), model.config.aux_tasks
    rng = np.random.default_rng(t.seed)
    params_list = [p for p in model.parameters() if p.requires_grad]
    model.set_sparse_embeddings(False)
    model.train()
    samples = 0
    for _ in track(range(f.meta_iterations), "meta-initialise (Reptile)"):
        rows = rows_of[categories[rng.integers(len(categories))]]
        start = [p.detach().clone() for p in params_list]
        inner = torch.optim.Adam(params_list, lr=f.meta_inner_lr)
        for _ in range(f.meta_inner_steps):
            batch = everything.take(
                torch.from_numpy(rng.choice(rows, min(t.batch_size, len(rows)), replace=True))
            )
            losses = task_losses(
                model.outputs(*batch.inputs()), batch.labels, heads, aux, batch.pointwise
            )
            inner.zero_grad(set_to_none=True)
            losses.sum().backward()
            inner.step()
            samples += len(batch)
        with torch.no_grad():
            for p, s in zip(params_list, start, strict=True):
                p.copy_(s + f.meta_step_size * (p - s))
    return len(categories), samples


def adapt(model: MultiTaskModel, data: TransferData, params: Params) -> Outcome:
    drawn, samples = meta_initialise(model, data, params)
    log.info("meta: initialised over %d old categories (%d rows)", drawn, samples)
    outcome = fine_tune_all(model, data, params, "fine-tune (meta)")
    outcome.samples += samples
    return outcome
