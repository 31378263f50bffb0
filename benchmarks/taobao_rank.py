"""Protocol taobao-rank-v1: at the moment a user first acts on an item, rank it among the other
items they viewed in the 24 h before. The pipeline's models (its recipe: pre-train on the old
categories, fine-tune the new ones, with every seed), the protocol's heuristic anchors and two
anchors of our own on the same inputs (logistic regression and gradient boosting on the model's
dense features, trained on the train-period queries and on the training examples), each
scored point-in-time on the ranking set the features step joined (features as of the query's
moment). Reports MRR, HR@3 and within-query AUC per task (mean over seeds, 95% interval over
users resampled), GAUC on the test exposures, and the multi-task model against the single-task
one on the ranking metrics pooled over tasks (paired, over users). With `--truth` (synthetic
data), also the Bayes-optimal figures of the generator's probabilities.

    nice python benchmarks/taobao_rank.py        # after `dvc repro`

Results: <out>.json (every figure) and <out>.md (the table); trained models are kept under
<workdir> and reused by a rerun with the same settings.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see benchmarks/taobao_mtl.py

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression

from shopguide.config import Params, load_params
from shopguide.errors import ShopguideError, exit_on_error
from shopguide.evaluate import checked_probabilities
from shopguide.feature_spec import dense_inputs, model_feature_columns
from shopguide.finetune import finetune_step
from shopguide.io import read_json, write_json
from shopguide.metrics import weighted_gauc
from shopguide.model.store import load_model
from shopguide.model.tensors import exposures_of, read_training_set
from shopguide.ranking.metrics import (
    RANKING_METRICS,
    QueryScores,
    paired_deltas,
    query_scores,
    summary,
)
from shopguide.ranking.queries import ranked_tasks
from shopguide.registry import champion
from shopguide.synth import bayes_auc
from shopguide.train import train_step

log = logging.getLogger("benchmarks.taobao_rank")
# The protocol's own figures (../shared/benchmarks/README.md): query counts and the heuristic
# anchors, MRR / HR@3 / AUC.
PROTOCOL_QUERIES = {"cart": 139, "fav": 52, "buy": 188}
PROTOCOL_ANCHORS = {  # method: {task: (MRR, HR@3, AUC)}
    "random": {
        "cart": (0.260, 0.281, 0.457),
        "fav": (0.244, 0.192, 0.551),
        "buy": (0.304, 0.351, 0.505),
    },
    "most recently viewed": {
        "cart": (0.383, 0.647, 0.721),
        "fav": (0.355, 0.558, 0.694),
        "buy": (0.439, 0.691, 0.721),
    },
    "most views by the user": {
        "cart": (0.325, 0.453, 0.663),
        "fav": (0.322, 0.423, 0.658),
        "buy": (0.447, 0.606, 0.719),
    },
    "item popularity": {
        "cart": (0.252, 0.266, 0.528),
        "fav": (0.276, 0.327, 0.574),
        "buy": (0.360, 0.441, 0.636),
    },
}


def heuristics(frame: pd.DataFrame, seed: int) -> dict[str, np.ndarray]:
    """The protocol's heuristic scores of each candidate, from its features as of the query."""
    recency = frame["user_item_stats__pv_last_ts"].to_numpy(np.float64)
    views = frame["user_item_stats__pv_count"].to_numpy(np.float64)
    return {
        "random": np.random.default_rng(seed).random(len(frame)),
        "most recently viewed": recency,
        # ties between equal view counts broken by recency, as the protocol's anchor does
        "most views by the user": views * 1e10 + recency,
        "item popularity": frame["item_stats__pv_all"].to_numpy(np.float64),
    }


def dense_matrix(frame: pd.DataFrame) -> np.ndarray:
    names = tuple(model_feature_columns())
    return np.log1p(dense_inputs(frame, frame["t0"].to_numpy(np.int64), names).clip(min=0))


def anchor_scores(
    train: pd.DataFrame, queries: pd.DataFrame, score: dict[str, pd.DataFrame], task: str, seed: int
) -> dict[str, dict[str, np.ndarray]]:
    """Logistic regression and gradient boosting for `task`, each fit on the training queries
    of the task and on the training examples; their scores on every frame of `score`."""
    own = queries[queries["task"] == task]
    fits = {
        "queries": (dense_matrix(own), own["positive"].to_numpy()),
        "examples": (dense_matrix(train), train[task].to_numpy()),
    }
    out: dict[str, dict[str, np.ndarray]] = {}
    for data, (x, y) in fits.items():
        mean, std = x.mean(axis=0), x.std(axis=0) + 1e-6
        lr = LogisticRegression(C=0.1, max_iter=3000).fit((x - mean) / std, y)
        gbm = HistGradientBoostingClassifier(
            max_iter=200, learning_rate=0.05, random_state=seed
        ).fit(x, y)
        for name, predict in (
            (
                "logistic regression",
                lambda z, m=lr, mu=mean, sd=std: m.decision_function((z - mu) / sd),
            ),
            ("gradient boosting", lambda z, m=gbm: m.predict_proba(z)[:, 1]),
        ):
            out[f"{name} ({data})"] = {k: predict(dense_matrix(f)) for k, f in score.items()}
    return out


def pipeline_model(params: Params, name: str, seed: int, paths: dict, workdir: Path) -> Path:
    """The pipeline's recipe (pre-train on the old categories, fine-tune the new ones) for
    model `name` and `seed`; a model already trained with the same settings is reused."""
    p = params.model_copy(
        update={
            "model": params.model.model_copy(update={"name": name}),
            "train": params.train.model_copy(update={"seed": seed}),
        }
    )
    out = workdir / f"{name}-seed{seed}"
    done = out / "settings.json"
    settings = p.model_dump(mode="json")
    if done.is_file() and read_json(done) == settings:
        return out / "candidate"
    started = time.perf_counter()
    train_step(
        paths["training_set"],
        out / "pretrained",
        out / "train.json",
        out / "train.csv",
        p,
        ranking_set=paths["ranking_set"],
    )
    finetune_step(
        paths["training_set"],
        out / "pretrained",
        out / "candidate",
        out / "finetune.json",
        out / "finetune.csv",
        p,
        ranking_set=paths["ranking_set"],
    )
    write_json(out / "seconds.json", {"seconds": time.perf_counter() - started})
    write_json(done, settings)
    return out / "candidate"


def user_weights(users: np.ndarray, samples: int, seed: int) -> np.ndarray:
    """(samples, rows) multiplicities of rows when users are drawn with replacement."""
    distinct, owner = np.unique(users, return_inverse=True)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(distinct), (samples, len(distinct)))
    counts = np.stack([np.bincount(d, minlength=len(distinct)) for d in draws])
    return counts[:, owner].astype(np.float64)


def gauc_summary(y: np.ndarray, scores: list[np.ndarray], users: np.ndarray, boot: int) -> dict:
    """GAUC on the test exposures: the mean over seeds, and a 95% interval over users."""
    ones = np.ones((1, len(y)))
    point = [weighted_gauc(y, s, users, ones)[0] for s in scores]
    w = user_weights(users, boot, 7)
    draws = np.mean([weighted_gauc(y, s, users, w) for s in scores], axis=0)
    low, high = np.nanpercentile(draws, [2.5, 97.5])
    return {"gauc": float(np.mean(point)), "gauc_ci": {"low": float(low), "high": float(high)}}


def mean_over_seeds(per_seed: list[QueryScores]) -> QueryScores:
    values = {m: np.mean([s.values[m] for s in per_seed], axis=0) for m in RANKING_METRICS}
    return QueryScores(per_seed[0].users, values)


def markdown(table: dict, tasks: list[str]) -> str:
    head = " | ".join(f"{t} MRR / HR@3 / AUC [AUC 95% CI]" for t in tasks)
    lines = [f"| method | {head} | GAUC {' / '.join(tasks)} |", "|---" * (len(tasks) + 2) + "|"]
    for name, row in table.items():
        cells = []
        for t in tasks:
            m = row["ranking"][t]
            ci = m.get("auc_ci") or {}
            interval = f" [{ci['low']:.3f}, {ci['high']:.3f}]" if ci else ""
            cells.append(f"{m['mrr']:.3f} / {m['hr3']:.3f} / {m['auc']:.3f}{interval}")
        gauc = row.get("gauc") or {}
        gaucs = " / ".join(f"{gauc[t]['gauc']:.3f}" if t in gauc else "-" for t in tasks)
        lines.append(f"| {name} | {' | '.join(cells)} | {gaucs} |")
    return "\n".join(lines)


def add_data_arguments(ap: argparse.ArgumentParser) -> None:
    """The params and the features step's training and ranking sets (`dvc repro`'s paths)."""
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument(
        "--training-set", type=Path, default=Path("artifacts/data/training_set.parquet")
    )
    ap.add_argument("--ranking-set", type=Path, default=Path("artifacts/data/ranking_set.parquet"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_arguments(ap)
    ap.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 3])
    ap.add_argument("--models", default="", help="comma-separated; default: params', single_task")
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument(
        "--no-anchors",
        action="store_true",
        help="skip the logistic-regression and boosting anchors (rows beside a full run)",
    )
    ap.add_argument("--truth", type=Path, help="synthetic data: the generator's probabilities")
    ap.add_argument("--exposures", type=Path, default=Path("artifacts/data/exposures.parquet"))
    ap.add_argument("--queries", type=Path, default=Path("artifacts/data/queries.parquet"))
    ap.add_argument("--workdir", type=Path, default=Path("reports/benchmarks/taobao_rank"))
    ap.add_argument("--out", type=Path, default=Path("reports/benchmarks/taobao-rank-v1"))
    args = ap.parse_args()
    torch.set_num_threads(2)
    params = load_params(args.params)
    models = [m for m in args.models.split(",") if m] or [params.model.name, "single_task"]
    paths = {"training_set": args.training_set, "ranking_set": args.ranking_set}
    examples = read_training_set(args.training_set)
    if not args.ranking_set.is_file():
        raise ShopguideError(f"{args.ranking_set}: ranking set not found (run `dvc repro`)")
    ranking = pd.read_parquet(args.ranking_set)
    test = ranking[ranking["split"] == "test"].reset_index(drop=True)
    train_queries = ranking[ranking["split"] == "train"]
    train = examples[examples["split"] == "train"]
    exposures = examples[(examples["split"] == "test") & exposures_of(examples)]
    tasks = ranked_tasks(params.protocol.tasks)
    counts = {t: int(test.loc[test["task"] == t, "query_id"].nunique()) for t in tasks}
    sizes = test.groupby("query_id").size()
    card = {
        "queries": counts,
        "users": int(test["user_id"].nunique()),
        "candidates_median": float(sizes.median()),
        "candidates_mean": float(sizes.mean()),
        "train_queries": {
            t: int(train_queries.loc[train_queries["task"] == t, "query_id"].nunique())
            for t in tasks
        },
    }
    card["protocol_queries"] = PROTOCOL_QUERIES  # the sample's published counts
    log.info("test queries %s (the protocol's, on the Taobao sample: %s)", card, PROTOCOL_QUERIES)
    frames = {"queries": test, "exposures": exposures}
    # scores[method][task] -> list over seeds of (query scores, exposure scores)
    scores: dict[str, dict[str, list[tuple[np.ndarray, np.ndarray]]]] = {}
    for seed in args.seeds:
        on_exposures = heuristics(exposures, seed)
        for name, values in heuristics(test, seed).items():
            for t in tasks:
                entry = (values, on_exposures[name])
                scores.setdefault(name, {}).setdefault(t, []).append(entry)
        for t in [] if args.no_anchors else tasks:
            found = anchor_scores(train, train_queries, frames, t, seed)
            for name, by_frame in found.items():
                entry = (by_frame["queries"], by_frame["exposures"])
                scores.setdefault(name, {}).setdefault(t, []).append(entry)
        for name in models:
            model_dir = pipeline_model(params, name, seed, paths, args.workdir)
            model = load_model(model_dir)
            q, x = checked_probabilities(model, test), checked_probabilities(model, exposures)
            for t in tasks:
                j = model.config.tasks.index(t)
                scores.setdefault(f"{name} (pipeline)", {}).setdefault(t, []).append(
                    (q[:, j], x[:, j])
                )
    registry = champion(params.registry.path)
    if registry is not None:
        model = load_model(registry.path)
        q, x = checked_probabilities(model, test), checked_probabilities(model, exposures)
        for t in tasks:
            j = model.config.tasks.index(t)
            scores.setdefault(f"champion {registry.name}", {})[t] = [(q[:, j], x[:, j])]
    table: dict = {}
    per_query: dict[str, dict[str, QueryScores]] = {}
    for name, by_task in scores.items():
        row: dict = {"ranking": {}, "gauc": {}}
        for t, runs in by_task.items():
            rows = (test["task"] == t).to_numpy()
            q = test.loc[rows]
            per_seed = [
                query_scores(q["query_id"], q["user_id"], q["positive"], s[rows]) for s, _ in runs
            ]
            per_query.setdefault(name, {})[t] = mean_over_seeds(per_seed)
            row["ranking"][t] = summary(per_query[name][t], args.bootstrap, 0.95, 7)
            users = exposures["user_id"].to_numpy()
            y = exposures[t].to_numpy(np.float64)
            row["gauc"][t] = gauc_summary(y, [x for _, x in runs], users, args.bootstrap)
        table[name] = row
    report = {"protocol": "taobao-rank-v1", "test": card, "table": table, "seeds": args.seeds}
    report["protocol_anchors"] = PROTOCOL_ANCHORS
    if args.truth is not None:
        report["bayes"] = bayes_auc(
            args.truth, args.exposures, params.data, params.protocol, args.queries
        )
    multi, single = f"{models[0]} (pipeline)", "single_task (pipeline)"
    if multi in per_query and single in per_query and multi != single:
        report["multi_vs_single"] = pooled_difference(per_query[multi], per_query[single], args)
    write_json(args.out.with_suffix(".json"), report)
    text = markdown(table, tasks)
    args.out.with_suffix(".md").write_text(text + "\n")
    log.info("taobao-rank-v1 (%s seeds)\n%s", len(args.seeds), text)


def pooled_difference(multi: dict, single: dict, args) -> dict:
    """Multi-task minus single-task on every test query of every task pooled, paired over
    users: the mean difference and its 95% interval per ranking metric."""
    tasks = sorted(multi)
    pooled = [
        QueryScores(
            np.concatenate([m[t].users for t in tasks]),
            {k: np.concatenate([m[t].values[k] for t in tasks]) for k in RANKING_METRICS},
        )
        for m in (multi, single)
    ]
    deltas = paired_deltas(*pooled, args.bootstrap, 7)
    out = {}
    for k, draws in deltas.items():
        low, high = np.percentile(draws, [2.5, 97.5])
        diff = float(pooled[0].values[k].mean() - pooled[1].values[k].mean())
        out[k] = {"difference": diff, "ci95": {"low": float(low), "high": float(high)}}
    return out


if __name__ == "__main__":
    exit_on_error(main)
