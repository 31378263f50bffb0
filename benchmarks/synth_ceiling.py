"""Protocol synth-scale, what the data identifies: fit the generator's own functional form
(`shopguide.synth.World.logits`: per-task weighted user x item affinity plus a category effect
per task, plus intercepts) by penalised maximum likelihood on the train exposures, and score
the test exposures next to the Bayes-optimal AUC of the true probabilities.

No model can know more about a task's structure than this one does, so its gap to the Bayes AUC
is the part that the number of events per user and per item leaves unidentified; the
project's model is then judged against both (docs/benchmarks.md, "Synthetic 10M").
Plugging the true factors into the same form reproduces the Bayes AUC (checked and reported).

    nice python benchmarks/synth_ceiling.py --events 10000000 --out /tmp/synth10m_ceiling

Generates and ingests the events with the project's CLI (users and items scale with events as
in benchmarks/synth_scale.py unless --users/--items set a denser world), then fits once per
`--l2`; writes <out>/synth_ceiling.json and <results>/synth-ceiling-<events>[-<users>u].json
(default benchmarks/results).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import logging
import time

import numpy as np
import pandas as pd
import torch
from synth_scale import add_world_arguments, aucs, density_suffix, world_run
from torch import nn

from shopguide.config import Params
from shopguide.errors import exit_on_error
from shopguide.io import write_json
from shopguide.logs import track
from shopguide.model.tasks import log_odds
from shopguide.model.tensors import exposures_of, time_split
from shopguide.synth import TASKS, World, bayes_auc

log = logging.getLogger("benchmarks.synth_ceiling")
KEYS = ("user_id", "item_id", "category_id")


class GeneratorForm(nn.Module):
    """logit_t = b_t + sum_d U[u, d] * M[t, d] * I[i, d] + C[c, t], every factor free."""

    def __init__(
        self, users: int, items: int, categories: int, dim: int, rates: list[float]
    ) -> None:
        super().__init__()
        self.user = nn.Embedding(users, dim)
        self.item = nn.Embedding(items, dim)
        self.category = nn.Embedding(categories, len(TASKS))
        self.mix = nn.Parameter(torch.ones(len(TASKS), dim))
        self.bias = nn.Parameter(torch.tensor([log_odds(r) for r in rates]))
        for table in (self.user, self.item):
            nn.init.normal_(table.weight, std=0.1)
        nn.init.zeros_(self.category.weight)

    def forward(self, u: torch.Tensor, i: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        affinity = torch.einsum("nd,td,nd->nt", self.user(u), self.mix, self.item(i))
        return self.bias + affinity + self.category(c)

    def penalty(self, u: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        """L2 on the rows a batch looked up (the factors are N(0, 1/d) a priori)."""
        return self.user(u).pow(2).sum() + self.item(i).pow(2).sum()


def tensors(frame: pd.DataFrame) -> tuple[torch.Tensor, ...]:
    ids = [torch.from_numpy(frame[k].to_numpy(np.int64) - 1) for k in KEYS]
    return (*ids, torch.from_numpy(frame[list(TASKS)].to_numpy(np.float32)))


@torch.no_grad()
def scores(model: GeneratorForm, data: tuple[torch.Tensor, ...]) -> np.ndarray:
    model.eval()
    out = [model(*(t[s : s + 65536] for t in data[:3])) for s in range(0, len(data[0]), 65536)]
    return torch.cat(out).numpy()


def fit(
    p: Params,
    fit_part: tuple,
    valid: tuple,
    l2: float,
    epochs: int,
    batch: int,
    seed: int,
    learning_rate: float,
) -> tuple[GeneratorForm, dict]:
    """Adam, early stopping on the validation mean AUC (patience 2); the best epoch's weights
    and its record (epoch, training loss, validation AUC)."""
    torch.manual_seed(seed)
    s = p.synth
    rates = fit_part[3].mean(dim=0).tolist()
    model = GeneratorForm(s.users, s.items, s.categories, s.latent_dim, rates)
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    loss_fn = nn.BCEWithLogitsLoss(reduction="sum")
    best, best_record, best_state, stale = -1.0, {}, None, 0
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(fit_part[0]))
        total = 0.0
        for start in track(range(0, len(order), batch), f"fit l2={l2:g} epoch {epoch}"):
            u, i, c, y = (t[order[start : start + batch]] for t in fit_part)
            loss = loss_fn(model(u, i, c), y) + l2 * model.penalty(u, i)
            optimizer.zero_grad(set_to_none=True)
            (loss / len(y)).backward()
            optimizer.step()
            total += float(loss.detach())
        valid_auc = aucs(valid[3].numpy(), scores(model, valid))
        mean = float(np.mean(list(valid_auc.values())))
        log.info(
            "l2 %g epoch %d: loss %.4f, validation %s", l2, epoch, total / len(order), valid_auc
        )
        if mean > best:
            best, stale = mean, 0
            best_record = {"epoch": epoch, "loss": total / len(order), "valid": valid_auc}
            best_state = {k: v.clone() for k, v in model.state_dict().items()}
        else:
            stale += 1
            if stale >= 2:
                break
    model.load_state_dict(best_state)
    return model, best_record


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_world_arguments(ap)
    ap.add_argument("--l2", default="1e-4,1e-3,1e-2")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=8192)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--learning-rate", type=float, default=1e-2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    raw, p, out, truth, exposures = world_run(a)
    frame = pd.read_parquet(exposures, columns=[*KEYS, "t0", "split", "sampled", *TASKS])
    frame = frame[exposures_of(frame)]  # the planted exposures, not the sampled items
    train, test = frame[frame["split"] == "train"], frame[frame["split"] == "test"]
    fit_rows, valid_rows = time_split(train, p.train.validation_fraction)
    fit_part, valid_part, test_data = tensors(fit_rows), tensors(valid_rows), tensors(test)
    labels = test_data[3].numpy()

    result = bayes_auc(truth, exposures, p.data, p.protocol)
    bayes = {t: round(result[t], 4) for t in TASKS}
    # The true factors in the same form reproduce the Bayes AUC (the form is the generator's).
    logits = World(p.synth).logits(test["user_id"].to_numpy() - 1, test["item_id"].to_numpy() - 1)
    true_form = aucs(labels, logits)

    fits = {}
    for l2 in (float(x) for x in a.l2.split(",")):
        started = time.monotonic()
        model, best = fit(
            p,
            fit_part,
            valid_part,
            l2,
            a.epochs,
            a.batch_size,
            a.seed,
            a.learning_rate,
        )
        fits[f"{l2:g}"] = {
            "test_auc": aucs(labels, scores(model, test_data)),
            "best_epoch": best["epoch"],
            "validation_auc": best["valid"],
            "seconds": round(time.monotonic() - started, 1),
        }
        log.info("l2 %g: test %s", l2, fits[f"{l2:g}"]["test_auc"])
    chosen = max(fits, key=lambda k: np.mean(list(fits[k]["validation_auc"].values())))
    report = {
        "protocol": "synth-scale",
        "events": a.events,
        "users": p.synth.users,
        "items": p.synth.items,
        "exposures": {"fit": len(fit_rows), "validation": len(valid_rows), "test": len(test)},
        "test_positives": {t: int(test[t].sum()) for t in TASKS},
        "bayes_auc": bayes,
        "true_factors_in_form_auc": true_form,
        "fits": fits,
        "chosen_l2": chosen,
        "ceiling_auc": fits[chosen]["test_auc"],
        "gap_to_bayes": {t: round(bayes[t] - fits[chosen]["test_auc"][t], 4) for t in TASKS},
    }
    write_json(out / "synth_ceiling.json", report)
    density = density_suffix(raw["synth"])
    write_json(a.results / f"synth-ceiling-{a.events}{density}.json", report)
    log.info("ceiling %s, Bayes %s", report["ceiling_auc"], bayes)


if __name__ == "__main__":
    exit_on_error(main)
