"""Synthetic events with a known optimum (protocol synth-scale).

Planted structure: user and item latent factors, the same users in every category, and task
weights shared by all of them; per-category task effects (unit variance per task) drawn from a
space of `synth.category_factor_dim` dimensions: 1 ties a category's effects on all tasks
together (what the categories share, so a new category's few events of any task place it); as
many as the tasks, the default, leaves each category's effects free, so a new category's
offsets must be learned task by task from its own events; Zipf item popularity; per-task base
rates set so the mean probability matches `synth.positive_rate`.
Events are written in the Taobao UserBehavior format, so the taobao adapter reads them, and every
exposure's true task probabilities go to a Parquet file: the Bayes-optimal AUC on the test
exposures follows from them. Vectorised numpy in chunks; the same seed gives the same bytes.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from scipy.optimize import brentq
from scipy.special import expit
from sklearn.metrics import roc_auc_score

from shopguide.config import DataParams, Params, ProtocolParams, SynthParams
from shopguide.duck import connect, sql_path
from shopguide.errors import ShopguideError
from shopguide.io import atomic_path
from shopguide.logs import track
from shopguide.metrics import weighted_gauc
from shopguide.ranking.metrics import query_scores

log = logging.getLogger(__name__)

CHUNK = 1_000_000
CALIBRATION_SAMPLE = 200_000  # exposures are in random order, so a prefix is a fair sample
TASKS: tuple[str, ...] = ("cart", "fav", "buy")
MAX_LABEL_DELAY_S = 6 * 3600
EXTRA_VIEWS = 0.3  # repeat page views per exposure (Poisson mean)
# The user x item affinity's weight in the logits (the category effects have unit variance).
AFFINITY_WEIGHT = 3.0


def _offsets(logits: np.ndarray, rates: dict[str, float]) -> np.ndarray:
    """Per-task intercepts so the mean probability over `logits` equals each target rate."""
    return np.array(
        [
            brentq(lambda b, j=j, t=t: expit(logits[:, j] + b).mean() - rates[t], -30.0, 30.0)
            for j, t in enumerate(TASKS)
        ]
    )


class World:
    """The planted model: factors for users, items and categories, and the per-task weights."""

    def __init__(self, p: SynthParams) -> None:
        rng = np.random.default_rng(p.seed)
        d, k = p.latent_dim, p.category_factor_dim
        self.users = rng.normal(size=(p.users, d)) / np.sqrt(d)
        self.items = rng.normal(size=(p.items, d)) / np.sqrt(d)
        self.item_category = rng.integers(0, p.categories, p.items)
        # Task loadings of the category space: non-negative (a category that sells well on one
        # task tends to on the others) and of unit norm per task, so every task's category effect
        # has unit variance: the dimension sets how tied the tasks are, not how strong each is.
        loadings = np.abs(rng.normal(size=(k, len(TASKS))))
        loadings /= np.linalg.norm(loadings, axis=0)
        self.category_effect = rng.normal(size=(p.categories, k)) @ loadings
        self.task_mix = rng.normal(size=(len(TASKS), d)) * 0.5 + 1.0  # tasks share the affinity
        popularity = 1.0 / np.arange(1, p.items + 1) ** p.zipf_exponent
        self.item_prob = popularity / popularity.sum()
        self.scale = p.signal_scale
        self.rng = rng
        self.offsets = np.zeros(len(TASKS))

    def calibrate(self, users: np.ndarray, items: np.ndarray, rates: dict[str, float]) -> None:
        """Set the intercepts on (a sample of) the exposures that will actually be written."""
        sample = slice(0, CALIBRATION_SAMPLE)
        self.offsets = _offsets(self.logits(users[sample], items[sample]), rates)

    def affinity_weights(self) -> np.ndarray:
        """(tasks, d) W of the affinity sum_d U[u, d] W[t, d] I[i, d]: linear in either side's
        factors (benchmarks/synth_bound.py infers one side with the other told)."""
        return self.scale * AFFINITY_WEIGHT * self.task_mix

    def affinity(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """(n, tasks) the task-weighted user x item part of the logits."""
        product = np.einsum("nd,td,nd->nt", self.users[users], self.task_mix, self.items[items])
        return self.scale * AFFINITY_WEIGHT * product

    def logits(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """(n, tasks) logits before the intercepts: task-weighted affinity plus category effect."""
        category = self.scale * self.category_effect[self.item_category[items]]
        return self.affinity(users, items) + category

    def probabilities(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        return expit(self.logits(users, items) + self.offsets)


def _exposure_pairs(p: SynthParams, world: World) -> tuple[np.ndarray, np.ndarray]:
    """Distinct (user, item) pairs, enough for about `p.events` events in all."""
    per_exposure = 1.0 + EXTRA_VIEWS + sum(p.positive_rate.values())
    wanted = int(p.events / per_exposure)
    users = world.rng.integers(0, p.users, int(wanted * 2.0))
    items = world.rng.choice(p.items, len(users), p=world.item_prob)
    _, first = np.unique(users.astype(np.int64) * p.items + items, return_index=True)
    keep = np.sort(first)[:wanted]
    if len(keep) < wanted:
        log.warning("only %d distinct user-item pairs of %d wanted", len(keep), wanted)
    return users[keep], items[keep]


def generate(out_csv: Path, truth: Path, params: Params) -> dict:
    """Write events (Taobao CSV, no header) and the true probabilities of every exposure."""
    p, protocol = params.synth, params.protocol
    missing = set(TASKS) - set(p.positive_rate)
    if missing:
        raise ShopguideError(f"synth.positive_rate has no rate for {sorted(missing)}")
    world = World(p)
    users, items = _exposure_pairs(p, world)
    world.calibrate(users, items, p.positive_rate)
    rng = world.rng
    span = protocol.window_end - protocol.window_start - MAX_LABEL_DELAY_S
    csv_options = pacsv.WriteOptions(include_header=False, quoting_style="none")
    n_events = 0
    with atomic_path(out_csv) as tmp_csv, atomic_path(truth) as tmp_truth:
        writer = None
        with tmp_csv.open("wb") as sink:
            starts = range(0, len(users), CHUNK)
            for start in track(starts, "synth", total=len(starts)):
                u, i = users[start : start + CHUNK], items[start : start + CHUNK]
                probs = world.probabilities(u, i)
                t0 = protocol.window_start + rng.integers(0, span, len(u))
                cat = world.item_category[i]
                parts = [(u, i, cat, np.full(len(u), "pv"), t0)]
                extra = rng.poisson(EXTRA_VIEWS, len(u))
                rows = np.repeat(np.arange(len(u)), extra)
                # The k-th repeat view lands in the k-th minute after t0: never a duplicate event.
                rank = np.arange(len(rows)) - np.repeat(np.cumsum(extra) - extra, extra)
                delay = 60 * (rank + 1) + rng.integers(0, 60, len(rows))
                parts.append(
                    (u[rows], i[rows], cat[rows], np.full(len(rows), "pv"), t0[rows] + delay)
                )
                for j, task in enumerate(TASKS):
                    hit = np.flatnonzero(rng.random(len(u)) < probs[:, j])
                    delay = rng.integers(0, MAX_LABEL_DELAY_S, len(hit))
                    parts.append(
                        (u[hit], i[hit], cat[hit], np.full(len(hit), task), t0[hit] + delay)
                    )
                columns = [np.concatenate(c) for c in zip(*parts, strict=True)]
                table = pa.table(
                    {
                        "user_id": columns[0] + 1,
                        "item_id": columns[1] + 1,
                        "category_id": columns[2] + 1,
                        "behavior": columns[3],
                        "ts": columns[4],
                    }
                )
                pacsv.write_csv(table, sink, csv_options)
                n_events += table.num_rows
                truth_chunk = pa.table(
                    {
                        "user_id": u + 1,
                        "item_id": i + 1,
                        "category_id": cat + 1,
                        "t0": t0,
                        **{f"p_{t}": probs[:, j] for j, t in enumerate(TASKS)},
                    }
                )
                if writer is None:
                    writer = pq.ParquetWriter(tmp_truth, truth_chunk.schema)
                writer.write_table(truth_chunk)
        if writer is not None:
            writer.close()
    summary = {"events": n_events, "exposures": len(users), "seed": p.seed}
    log.info("synth: %s -> %s, truth %s", summary, out_csv, truth)
    return summary


def bayes_auc(
    truth: Path,
    exposures: Path,
    data: DataParams,
    protocol: ProtocolParams,
    queries: Path | None = None,
) -> dict:
    """The Bayes-optimal figures on the test split, from the generator's true probabilities:
    per task the AUC over the test exposures (`<task>`, and their `mean`), the GAUC within
    each user (`gauc`), and with `queries` the taobao-rank-v1 metrics (`ranking`).

    A task's events come once per exposure at a uniform delay in [0, MAX_LABEL_DELAY_S) after
    t0, so a horizon label is positive with probability p * min(h, D) / D: ranking exposures by
    p is optimal whatever the horizon. In a query at time t, the candidate whose event is the
    one at t is best told by its hazard at t: p / D / (1 - p (t - t0) / D) while t - t0 < D, 0
    after (its event would have come already)."""
    for path in (truth, exposures):
        if not Path(path).is_file():
            raise ShopguideError(f"{path}: not found (run `shopguide synth` and `ingest` first)")
    tasks = [t for t in protocol.tasks if t in TASKS]
    con = connect(data)
    cols = ", ".join(f"x.{t}, p.p_{t}" for t in tasks)
    real = "AND NOT x.sampled" if _has_column(con, exposures, "sampled") else ""
    frame = con.execute(
        f"""SELECT x.user_id, {cols} FROM read_parquet({sql_path(exposures)}) x
            JOIN read_parquet({sql_path(truth)}) p USING (user_id, item_id)
            WHERE x.split = 'test' {real}"""
    ).fetchnumpy()
    if len(frame[tasks[0]]) == 0:
        raise ShopguideError(f"{exposures}: no test exposures match {truth}")
    result: dict = {"gauc": {}}
    ones = np.ones((1, len(frame[tasks[0]])))
    for t in tasks:
        labels = np.asarray(frame[t], np.float64)
        if labels.min() == labels.max():
            raise ShopguideError(f"{exposures}: task {t} has a single class on test exposures")
        result[t] = float(roc_auc_score(labels, frame[f"p_{t}"]))
        gauc = weighted_gauc(labels, np.asarray(frame[f"p_{t}"]), frame["user_id"], ones)[0]
        result["gauc"][t] = None if np.isnan(gauc) else float(gauc)
    result["mean"] = float(np.mean([result[t] for t in tasks]))
    result["test_exposures"] = len(frame[tasks[0]])
    if queries is not None:
        result["ranking"] = _bayes_ranking(con, truth, queries, tasks)
    log.info("Bayes-optimal test figures: %s", result)
    return result


def _has_column(con, path: Path, column: str) -> bool:
    names = [
        r[0]
        for r in con.execute(f"DESCRIBE SELECT * FROM read_parquet({sql_path(path)})").fetchall()
    ]
    return column in names


def _bayes_ranking(con, truth: Path, queries: Path, tasks: list[str]) -> dict:
    """taobao-rank-v1's test MRR, HR@3 and within-query AUC of the candidates' true hazards."""
    out = {}
    for t in tasks:
        frame = con.execute(
            f"""SELECT q.query_id, q.user_id, q.positive, q.t0 - p.t0 AS since, p.p_{t} AS p
                FROM read_parquet({sql_path(queries)}) q
                JOIN read_parquet({sql_path(truth)}) p USING (user_id, item_id)
                WHERE q.split = 'test' AND q.task = '{t}'"""
        ).fetchnumpy()
        if not len(frame["query_id"]):
            continue
        since, p = np.asarray(frame["since"], np.float64), np.asarray(frame["p"], np.float64)
        delay = MAX_LABEL_DELAY_S
        alive = (since >= 0) & (since < delay)
        hazard = np.where(alive, p / delay / np.maximum(1 - p * since / delay, 1e-12), 0.0)
        scores = query_scores(frame["query_id"], frame["user_id"], frame["positive"], hazard)
        out[t] = {m: float(v.mean()) for m, v in scores.values.items()} | {
            "queries": len(scores.users)
        }
    return out
