"""Protocol synth-scale, an upper bound on what any model can reach from the events: the Bayes
predictor that is told everything but one side's latent factors.

The generator's logit is b_t + s C[c, t] + sum_d U[u, d] W[t, d] I[i, d] (`shopguide.synth.World`).
Told the item factors I, the category effects C, the task weights W and the intercepts b, the
only unknown left is each user's factor U[u] (prior N(0, I/d)), and each labelled exposure of
the user is a logistic observation of it. For every test exposure this script scores the
posterior predictive probability given all *other* labelled exposures of its user (earlier and
later ones: more than a model has at t0), by a Laplace approximation per user (Newton to the
posterior mode, then the exposure's own labels taken out by one Newton step, the probit
approximation of the predictive). The same with the user factors told and the items' unknown.
A model that knows neither, nor the form, can only do worse than either bound, so

    min(user-side bound, item-side bound) >= what the events identify.

The observations are the planted events: whether the pair has each task's event at any time
after t0, which the generator draws with exactly the logistic probability. The protocol's
labels (`protocol.label_horizon_s`) keep only the events before t0 + horizon, positive with
probability p * min(h, D) / D (`shopguide.synth.bayes_auc`), which no logistic observation
describes; the planted events tell the bound more than those labels would. Every AUC is of the
protocol's test labels, as the Bayes AUC and the models' are.

Both bounds next to the Bayes AUC (every factor told) and the prior-only AUC (no labels used)
show how much of the Bayes AUC the number of labelled exposures per user and item can reach.

    nice python benchmarks/synth_bound.py --events 10000000 --out /tmp/synth10m_bound

Generates and ingests the events like benchmarks/synth_ceiling.py (reusing <out> if present);
writes <out>/synth_bound.json and <results>/synth-bound-<events>[-<users>u].json.
"""

from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import torch
from scipy.special import logit
from synth_scale import add_world_arguments, aucs, density_suffix, world_run

from shopguide.config import Params
from shopguide.errors import exit_on_error
from shopguide.exposures import window_events_sql
from shopguide.io import write_json
from shopguide.logs import track
from shopguide.model.tensors import exposures_of
from shopguide.synth import TASKS, World, bayes_auc

log = logging.getLogger("benchmarks.synth_bound")
CHUNK = 500_000  # exposures per pass: bounds the (rows, d, d) curvature terms held at once
MAX_NEWTON_STEPS = 30
# Step sizes tried along each entity's Newton direction (0: stay, for an entity at its mode).
STEPS = torch.tensor([1.0, 0.5, 0.25, 0.125, 1 / 16, 1 / 64, 0.0], dtype=torch.float64)


class Side:
    """The observations of one side's unknown factors: exposure j, task t has design vector
    x_jt = W[t] * K[j] (W: `World.affinity_weights`, K: the other side's factor, told) and
    offset b_t + s C[c_j, t]."""

    def __init__(self, world: World, owner: np.ndarray, known: np.ndarray) -> None:
        self.owner = torch.from_numpy(owner)  # (n,) whose factor each exposure observes
        self.known = torch.from_numpy(known.astype(np.float64))  # (n, d)
        self.weights = torch.from_numpy(world.affinity_weights())  # (T, d)
        self.entities, self.dim = int(owner.max()) + 1, known.shape[1]

    def design(self, rows: slice | torch.Tensor) -> torch.Tensor:
        """(rows, T, d) design vectors."""
        return self.known[rows, None, :] * self.weights[None]


def offsets_of(world: World, frame: pd.DataFrame, truth: Path) -> np.ndarray:
    """(n, T) b_t + s C[c, t] of every exposure: the true logit less the affinity, read off the
    true probabilities (the intercepts are calibrated in `generate`, not stored)."""
    u, i = frame["user_id"].to_numpy() - 1, frame["item_id"].to_numpy() - 1
    probs = pd.read_parquet(truth, columns=["user_id", "item_id", *[f"p_{t}" for t in TASKS]])
    merged = frame[["user_id", "item_id"]].merge(probs, on=["user_id", "item_id"], how="left")
    true_logit = logit(merged[[f"p_{t}" for t in TASKS]].to_numpy(np.float64))
    return true_logit - world.affinity(u, i)


def _derivatives(
    side: Side, labels: torch.Tensor, offsets: torch.Tensor, theta: torch.Tensor, precision: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient (E, d) and negative Hessian (E, d, d) of each entity's log posterior."""
    d = side.dim
    grad = -precision * theta
    hess = precision * torch.eye(d, dtype=torch.float64).expand(side.entities, d, d).clone()
    for start in range(0, len(labels), CHUNK):
        rows = slice(start, start + CHUNK)
        x, owner = side.design(rows), side.owner[rows]
        p = torch.sigmoid(torch.einsum("ntd,nd->nt", x, theta[owner]) + offsets[rows])
        grad.index_add_(0, owner, torch.einsum("nt,ntd->nd", labels[rows] - p, x))
        hess.index_add_(0, owner, torch.einsum("nt,ntd,nte->nde", p * (1 - p), x, x))
    return grad, hess


def _along(
    side: Side,
    labels: torch.Tensor,
    offsets: torch.Tensor,
    theta: torch.Tensor,
    direction: torch.Tensor,
    precision: float,
) -> torch.Tensor:
    """(E, len(STEPS)) log posterior of each entity at theta + a * direction, for every a in
    STEPS at once (the logits are linear in a)."""
    values = (
        -0.5 * precision * ((theta[:, None] + STEPS[:, None] * direction[:, None]) ** 2).sum(-1)
    )
    for start in range(0, len(labels), CHUNK):
        rows = slice(start, start + CHUNK)
        x, owner = side.design(rows), side.owner[rows]
        z = torch.einsum("ntd,nd->nt", x, theta[owner]) + offsets[rows]
        dz = torch.einsum("ntd,nd->nt", x, direction[owner])
        z = z[:, None] + STEPS[None, :, None] * dz[:, None]  # (n, steps, T)
        loglik = labels[rows][:, None] * z - torch.nn.functional.softplus(z)
        values.index_add_(0, owner, loglik.sum(-1))
    return values


def posterior_modes(
    side: Side, labels: torch.Tensor, offsets: torch.Tensor, precision: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each entity's posterior mode by damped Newton (the log posterior is concave; a full
    step overshoots for the most exposed ids, so each entity takes the best of STEPS along its
    Newton direction); returns the modes (E, d) and the negative Hessians there (E, d, d)."""
    theta = torch.zeros(side.entities, side.dim, dtype=torch.float64)
    for step in range(MAX_NEWTON_STEPS):
        grad, hess = _derivatives(side, labels, offsets, theta, precision)
        direction = torch.linalg.solve(hess, grad)
        best = _along(side, labels, offsets, theta, direction, precision).argmax(dim=1)
        move = STEPS[best, None] * direction
        theta += move
        largest = float(move.abs().max())
        log.info("Newton step %d: largest move %.2e", step, largest)
        if largest < 1e-8:
            break
    return theta, _derivatives(side, labels, offsets, theta, precision)[1]


def held_out_probabilities(
    side: Side,
    rows: np.ndarray,
    labels: torch.Tensor,
    offsets: torch.Tensor,
    theta: torch.Tensor,
    hess: torch.Tensor,
) -> np.ndarray:
    """(len(rows), T) predictive probabilities of exposures `rows` given their entity's other
    exposures: the exposure's labels taken out of the mode by one Newton step, then the probit
    approximation E[sigmoid(z)] ~ sigmoid(mean / sqrt(1 + pi var / 8))."""
    out = []
    for start in range(0, len(rows), CHUNK):
        idx = torch.from_numpy(rows[start : start + CHUNK])
        x, owner = side.design(idx), side.owner[idx]
        mode = theta[owner]
        p = torch.sigmoid(torch.einsum("ntd,nd->nt", x, mode) + offsets[idx])
        own_hess = torch.einsum("nt,ntd,nte->nde", p * (1 - p), x, x)
        rest = hess[owner] - own_hess
        own_grad = torch.einsum("nt,ntd->nd", labels[idx] - p, x)
        # one solve with H_rest for the Newton step and for H_rest^-1 x of every task
        solved = torch.linalg.solve(rest, torch.cat([own_grad[..., None], x.mT], dim=2))
        held_out = mode - solved[..., 0]
        mean = torch.einsum("ntd,nd->nt", x, held_out) + offsets[idx]
        var = torch.einsum("ntd,ntd->nt", x, solved[..., 1:].mT)
        out.append(torch.sigmoid(mean / torch.sqrt(1 + math.pi * var / 8)).numpy())
    return np.concatenate(out)


def prior_probabilities(side: Side, rows: np.ndarray, offsets: torch.Tensor, precision: float):
    """Predictive probabilities with no labels at all: the factor at its prior."""
    idx = torch.from_numpy(rows)
    x = side.design(idx)
    var = (x * x).sum(-1) / precision
    return torch.sigmoid(offsets[idx] / torch.sqrt(1 + math.pi * var / 8)).numpy()


def planted_labels(p: Params, frame: pd.DataFrame, events: Path) -> np.ndarray:
    """(n, T) whether each exposure's pair has the task's event at or after its t0, at any
    time (the generator plants at most one per pair and task): a logistic observation of the
    pair's logit, whatever horizon the protocol's labels have."""
    con = duckdb.connect()
    con.register("probe", frame[["user_id", "item_id", "t0"]].reset_index(drop=True).reset_index())
    flags = ", ".join(f"count(e.ts) FILTER (WHERE e.behavior = '{t}') > 0 AS {t}" for t in TASKS)
    planted = con.execute(f"""
        SELECT p.index, {flags} FROM probe p
        LEFT JOIN {window_events_sql(events, p.protocol)} e
          ON e.user_id = p.user_id AND e.item_id = p.item_id AND e.ts >= p.t0
        GROUP BY p.index ORDER BY p.index""").fetchnumpy()
    labels = np.stack([np.asarray(planted[t], np.float64) for t in TASKS], axis=1)
    # A protocol label is a planted event inside the horizon: never one that was not planted.
    assert (frame[list(TASKS)].to_numpy() <= labels).all(), "labels without a planted event"
    return labels


def bounds(p: Params, truth: Path, exposures: Path, events: Path) -> dict:
    """Both one-sided bounds and the prior-only AUC on the test exposures: factors inferred
    from the planted events (`planted_labels`), AUCs of the protocol's test labels."""
    world = World(p.synth)
    columns = ["user_id", "item_id", "t0", "split", "sampled", *TASKS]
    frame = pd.read_parquet(exposures, columns=columns)
    frame = frame[exposures_of(frame)].reset_index(drop=True)  # the planted exposures
    labels = torch.from_numpy(planted_labels(p, frame, events))
    offsets = torch.from_numpy(offsets_of(world, frame, truth))
    test = np.flatnonzero(frame["split"].to_numpy() == "test")
    test_labels = frame[list(TASKS)].to_numpy(np.float64)[test]
    precision = float(p.synth.latent_dim)  # factors are N(0, I/d) a priori
    u, i = frame["user_id"].to_numpy() - 1, frame["item_id"].to_numpy() - 1
    sides = {
        "user": Side(world, u, world.items[i]),
        "item": Side(world, i, world.users[u]),
    }
    report: dict = {"prior_only_auc": {}, "bound_auc": {}}
    for name, side in track(sides.items(), "sides", total=2):
        theta, hess = posterior_modes(side, labels, offsets, precision)
        held_out = held_out_probabilities(side, test, labels, offsets, theta, hess)
        report["bound_auc"][name] = aucs(test_labels, held_out)
        prior = prior_probabilities(side, test, offsets, precision)
        report["prior_only_auc"][name] = aucs(test_labels, prior)
        log.info("%s-side bound %s", name, report["bound_auc"][name])
    report["bound"] = {t: min(b[t] for b in report["bound_auc"].values()) for t in TASKS}
    report["test_exposures"] = len(test)
    report["test_positives"] = {t: int(test_labels[:, j].sum()) for j, t in enumerate(TASKS)}
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_world_arguments(ap)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    raw, p, out, truth, exposures = world_run(a)
    bayes = bayes_auc(truth, exposures, p.data, p.protocol)
    report = {
        "protocol": "synth-scale",
        "events": a.events,
        "users": p.synth.users,
        "items": p.synth.items,
        "bayes_auc": {t: round(bayes[t], 4) for t in TASKS},
        **bounds(p, truth, exposures, out / "events.parquet"),
    }
    report["gap_to_bayes"] = {
        t: round(report["bayes_auc"][t] - report["bound"][t], 4) for t in TASKS
    }
    write_json(out / "synth_bound.json", report)
    write_json(a.results / f"synth-bound-{a.events}{density_suffix(raw['synth'])}.json", report)
    log.info("bound %s, Bayes %s", report["bound"], report["bayes_auc"])


if __name__ == "__main__":
    exit_on_error(main)
