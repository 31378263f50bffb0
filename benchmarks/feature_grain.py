"""Protocol taobao-mtl-v1: what the feature grain (`features.snapshot_interval_s`) is worth to
plain models on the same 54 features. For each grain it builds the point-in-time training set
with the project's own features step (a scratch Feast repo per grain) and scores logistic
regression (validation = the last train day; test) and HistGradientBoosting (3 seeds, test AUC
and log loss), the models behind the anchors of docs/benchmarks.md.

    nice python benchmarks/feature_grain.py --events artifacts/data/events.parquet \
        --exposures artifacts/data/exposures.parquet
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss, roc_auc_score

from shopguide.config import load_params
from shopguide.errors import exit_on_error
from shopguide.feature_spec import model_feature_columns
from shopguide.features import apply_repo, fresh_repo, training_set, write_feature_tables
from shopguide.io import write_json

log = logging.getLogger("benchmarks.feature_grain")
ROOT = Path(__file__).resolve().parents[1]
GRAINS = {
    "hourly": {"user": 3600, "item": 3600, "category": 3600},
    "exact": {"user": 1, "item": 1, "category": 1},
    "exact user+item, hourly category": {"user": 1, "item": 1, "category": 3600},
    "exact user, hourly item+category": {"user": 1, "item": 3600, "category": 3600},
}
VALIDATION_START = 1512057600  # 2017-12-01 00:00 UTC+8: the last train day


def build(events: Path, exposures: Path, grain: dict, params, workdir: Path) -> pd.DataFrame:
    p = params.model_copy(
        update={"features": params.features.model_copy(update={"snapshot_interval_s": grain})}
    )
    repo = fresh_repo(ROOT / "feature_repo", workdir / "repo")
    write_feature_tables(events, repo, p)
    out = workdir / "training_set.parquet"
    training_set(apply_repo(repo), exposures, out, p)
    return pd.read_parquet(out)


def logistic(fit: pd.DataFrame, score: pd.DataFrame, task: str, cols: list[str]) -> float:
    """C 0.1 on log1p counts standardised on the fitting rows."""
    a, b = np.log1p(fit[cols].to_numpy(float)), np.log1p(score[cols].to_numpy(float))
    mu, sd = a.mean(0), a.std(0) + 1e-9
    model = LogisticRegression(C=0.1, max_iter=2000).fit((a - mu) / sd, fit[task])
    return float(roc_auc_score(score[task], model.predict_proba((b - mu) / sd)[:, 1]))


def boosting(train: pd.DataFrame, test: pd.DataFrame, task: str, cols: list[str]) -> dict:
    aucs, losses = [], []
    for seed in (1, 2, 3):
        model = HistGradientBoostingClassifier(
            max_iter=200, learning_rate=0.05, random_state=seed, early_stopping=True
        ).fit(train[cols], train[task])
        p = model.predict_proba(test[cols])[:, 1]
        aucs.append(roc_auc_score(test[task], p))
        losses.append(log_loss(test[task], p))
    return {"auc": float(np.mean(aucs)), "logloss": float(np.mean(losses))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=Path, default=Path("artifacts/data/events.parquet"))
    ap.add_argument("--exposures", type=Path, default=Path("artifacts/data/exposures.parquet"))
    ap.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    ap.add_argument("--out", type=Path, default=Path("reports/benchmarks/feature_grain.json"))
    args = ap.parse_args()
    params = load_params(args.params)
    tasks, cols = params.protocol.tasks, model_feature_columns()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, grain in GRAINS.items():
            frame = build(args.events, args.exposures, grain, params, Path(tmp))
            train, test = frame[frame["split"] == "train"], frame[frame["split"] == "test"]
            late = train["t0"] >= VALIDATION_START
            fit, valid = train[~late], train[late]
            results[name] = {
                "grain": grain,
                "logistic_validation": {t: logistic(fit, valid, t, cols) for t in tasks},
                "logistic_test": {t: logistic(train, test, t, cols) for t in tasks},
                "boosting_test": {t: boosting(train, test, t, cols) for t in tasks},
            }
            log.info("%s: %s", name, json.dumps(results[name]))
    write_json(args.out, results)


if __name__ == "__main__":
    exit_on_error(main)
