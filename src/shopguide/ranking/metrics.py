"""Ranking metrics of protocol taobao-rank-v1, per query and averaged with intervals over users.

Within one query the positive's rank counts the candidates scored above it plus half of those
tied with it (the expected rank under a random tie-break), so a constant score gets the random
ranker's mean reciprocal rank. HR@3: rank at most 3. AUC within the query: the share of
negatives scored below the positive, ties counting half.

Intervals resample users, not queries (a user's queries are not independent), with the
multiplicity matrices of `shopguide.metrics.bootstrap_weights`; the same seed resamples the
same users, so two models' draws are paired.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shopguide.metrics import bootstrap_weights, interval

RANKING_METRICS = ("mrr", "hr3", "auc")


@dataclass(frozen=True)
class QueryScores:
    """The per-query values of one score on one set of queries."""

    users: np.ndarray  # (queries,) int64, the user of each query
    values: dict[str, np.ndarray]  # metric -> (queries,) float64


def query_scores(
    query_ids: np.ndarray, users: np.ndarray, positive: np.ndarray, scores: np.ndarray
) -> QueryScores:
    """Reciprocal rank, hit at 3 and within-query AUC of each query, in query-id order.
    `query_ids`, `users`, `positive` (0/1, one per query) and `scores`: one entry per
    candidate."""
    query_ids = np.asarray(query_ids)
    order = np.argsort(query_ids, kind="stable")
    q, pos, s = query_ids[order], np.asarray(positive)[order] == 1, np.asarray(scores)[order]
    new = np.r_[True, q[1:] != q[:-1]]
    starts, owner = np.flatnonzero(new), np.cumsum(new) - 1
    if (np.bincount(owner, weights=pos, minlength=len(starts)) != 1).any():
        raise ValueError("every query needs exactly one positive candidate")
    positive_score = np.zeros(len(starts))
    positive_score[owner[pos]] = s[pos]
    mine = positive_score[owner]
    above = np.bincount(owner, weights=(~pos) & (s > mine), minlength=len(starts))
    tied = np.bincount(owner, weights=(~pos) & (s == mine), minlength=len(starts))
    negatives = np.diff(np.r_[starts, len(q)]) - 1
    rank = 1 + above + tied / 2
    return QueryScores(
        users=np.asarray(users)[order][starts].astype(np.int64),
        values={
            "mrr": 1 / rank,
            "hr3": (rank <= 3).astype(np.float64),
            "auc": (negatives - above - tied / 2) / negatives,
        },
    )


def _by_user(result: QueryScores) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """(distinct users, queries per user, each metric's sum per user)."""
    users, owner = np.unique(result.users, return_inverse=True)
    counts = np.bincount(owner, minlength=len(users)).astype(np.float64)
    sums = {
        m: np.bincount(owner, weights=v, minlength=len(users)) for m, v in result.values.items()
    }
    return users, counts, sums


def summary(result: QueryScores, samples: int, confidence: float, seed: int) -> dict:
    """{metric: value, metric_ci: {low, high}} and the query and user counts; the mean over
    queries with a percentile interval over users resampled with replacement."""
    out: dict = {"queries": len(result.users), "users": len(np.unique(result.users))}
    if not len(result.users):
        return out | {m: None for m in RANKING_METRICS}
    _, counts, sums = _by_user(result)
    draws: dict[str, list[np.ndarray]] = {m: [] for m in sums}
    for w in bootstrap_weights(len(counts), samples, seed):
        for m, s in sums.items():
            draws[m].append((w @ s) / np.maximum(w @ counts, 1e-12))
    for m, v in result.values.items():
        out[m] = float(v.mean())
        if samples:
            low, high = interval(np.concatenate(draws[m]), confidence)
            out[f"{m}_ci"] = {"low": low, "high": high}
    return out


def paired_deltas(
    candidate: QueryScores, champion: QueryScores, samples: int, seed: int
) -> dict[str, np.ndarray]:
    """Bootstrap draws of (candidate - champion) per metric on the same queries, over the same
    resampled users."""
    if not np.array_equal(candidate.users, champion.users):
        raise ValueError("the two models were scored on different queries")
    _, counts, cand = _by_user(candidate)
    _, _, champ = _by_user(champion)
    out: dict[str, list[np.ndarray]] = {m: [] for m in cand}
    for w in bootstrap_weights(len(counts), samples, seed):
        total = np.maximum(w @ counts, 1e-12)
        for m in cand:
            out[m].append((w @ (cand[m] - champ[m])) / total)
    return {m: np.concatenate(v) if v else np.zeros(0) for m, v in out.items()}
