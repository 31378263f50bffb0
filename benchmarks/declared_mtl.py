"""Protocols olist-mtl-v1 and olist-review-v1 (../shared/benchmarks/README.md), or any declared
dataset: the multi-task model on every task, the same model trained on each task alone, and
per-task anchors on the same examples: gradient boosting (HistGradientBoosting) on the
features known at t0 without history (the protocol's anchor) and with it, and for a schema
with text, TF-IDF character 2-5-grams with logistic or ridge regression. Several seeds; the
seed-mean metric (binary: AUC, and GAUC where the schema names the user) with a paired
bootstrap interval over the test examples whose label is known, and the multi-task gain over
single-task per task.

    python benchmarks/declared_mtl.py --schema datasets/olist.yaml \
        --out benchmarks/results/olist-mtl-v1.json
    python benchmarks/declared_mtl.py --schema datasets/olist_review.yaml \
        --out benchmarks/results/olist-review-v1.json
    python benchmarks/declared_mtl.py --schema datasets/taobao.yaml \
        --params datasets/taobao.params.yaml --out benchmarks/results/taobao-declared.json
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression, Ridge
from synth_scale import add_overrides, apply_overrides

from shopguide.config import Params
from shopguide.dataset.examples import build_examples
from shopguide.dataset.learn import (
    metric_draws,
    predictions,
    resample_weights,
    summary,
    train_declared,
)
from shopguide.dataset.schema import DatasetSchema, load_schema
from shopguide.errors import exit_on_error
from shopguide.evaluate import category_groups
from shopguide.held_out import category_counts
from shopguide.io import write_json

log = logging.getLogger("benchmarks.declared_mtl")


def boosting(
    train: pd.DataFrame,
    test: pd.DataFrame,
    schema: DatasetSchema,
    task: str,
    columns: list[str],
    seed: int,
) -> np.ndarray:
    """HistGradientBoosting on `columns` (categorical ones as native categories)."""
    categorical = [c for c in columns if c in schema.features_of("categorical")]
    both = pd.concat([train[columns], test[columns]])
    for c in categorical:  # codes shared by train and test; beyond the 250 most frequent
        top = both[c].value_counts().index[:250]  # values (the model's limit), one code
        both[c] = both[c].where(both[c].isin(top)).astype("category").cat.codes
    x_train, x_test = both.iloc[: len(train)], both.iloc[len(train) :]
    kind = schema.tasks[task].type
    known = train[task].notna()
    mask = [c in categorical for c in columns]
    if kind == "regression":
        model = HistGradientBoostingRegressor(categorical_features=mask, random_state=seed)
        return model.fit(x_train[known], train.loc[known, task]).predict(x_test)
    model = HistGradientBoostingClassifier(categorical_features=mask, random_state=seed)
    model.fit(x_train[known], train.loc[known, task].astype(int))
    proba = model.predict_proba(x_test)
    return proba[:, 1] if kind == "binary" else proba


def tfidf(train: pd.DataFrame, test: pd.DataFrame, schema: DatasetSchema, task: str) -> np.ndarray:
    """TF-IDF character 2-5-grams of the text features; logistic or ridge regression."""
    texts = schema.features_of("text")

    def joined(frame: pd.DataFrame) -> pd.Series:
        return frame[texts].fillna("").astype(str).agg(" ".join, axis=1)

    vectorizer = TfidfVectorizer(
        analyzer="char_wb", ngram_range=(2, 5), min_df=2, sublinear_tf=True
    )
    x_train = vectorizer.fit_transform(joined(train))
    x_test = vectorizer.transform(joined(test))
    known = train[task].notna().to_numpy()
    if schema.tasks[task].type == "regression":
        return Ridge(alpha=1.0).fit(x_train[known], train.loc[known, task]).predict(x_test)
    model = LogisticRegression(max_iter=2000, C=4.0).fit(
        x_train[known], train.loc[known, task].astype(int)
    )
    return model.predict_proba(x_test)[:, 1]


def run(
    schema: DatasetSchema,
    params: Params,
    seeds: list[int],
    samples: int,
    predictions_out: Path | None = None,
) -> dict:
    """Every method on every seed; with `predictions_out`, the multi- and single-task models'
    test predictions per seed as `benchmarks/per_category.py` reads them."""
    examples = build_examples(schema)
    train = examples[examples["split"] == "train"]
    test = examples[examples["split"] == "test"].reset_index(drop=True)
    tasks = list(schema.tasks)
    history = {h.feature for h in schema.history}
    own = [f for k in ("numeric", "categorical") for f in schema.features_of(k) if f not in history]
    everything = own + [f for f in schema.features_of("numeric") if f in history]
    weights = resample_weights(len(test), samples, seeds[0])
    draws: dict[str, dict[str, list]] = {}  # method -> task -> per-seed draws

    users = test["user_id"].to_numpy() if schema.ids.user else None
    groups = category_groups(
        category_counts(train["category_id"]), params.evaluation.category_group_shares
    )
    kept = pd.DataFrame(
        {
            "category_id": test["category_id"],
            "group": test["category_id"].map(groups).fillna("tail"),
        }
    )
    for task, spec in schema.tasks.items():
        if spec.type != "multiclass":  # one score per row
            kept[f"label/{spec.type}/{task}"] = test[task].astype(float)

    def record(method: str, task: str, guess: np.ndarray, seed: int) -> None:
        """The task's draws on its known labels (censored ones left out), with GAUC where
        the schema names the user."""
        if method in ("multi_task", "single_task") and schema.tasks[task].type != "multiclass":
            kept[f"{method}/{seed}/{task}"] = np.asarray(guess, dtype=np.float64)
        y = test[task].to_numpy(np.float64)
        known = ~np.isnan(y)
        draws.setdefault(method, {}).setdefault(task, []).append(
            metric_draws(
                schema.tasks[task].type,
                y[known],
                np.asarray(guess)[known],
                weights[:, known],
                users[known] if users is not None else None,
            )
        )

    for seed in seeds:
        seeded = params.model_copy(update={"train": params.train.model_copy(update={"seed": seed})})
        model, result = train_declared(examples, schema, seeded)
        for task, guess in predictions(model, test, schema).items():
            record("multi_task", task, guess, seed)
        for task in tasks:
            single, _ = train_declared(examples, schema, seeded, tasks=[task])
            record("single_task", task, predictions(single, test, schema)[task], seed)
            if own:
                guess = boosting(train, test, schema, task, own, seed)
                record("boosting_no_history", task, guess, seed)
            if len(everything) > len(own):
                guess = boosting(train, test, schema, task, everything, seed)
                record("boosting", task, guess, seed)
            if schema.features_of("text"):
                record("tfidf_linear", task, tfidf(train, test, schema, task), seed)
        log.info("seed %d done (multi-task best epoch %d)", seed, result.best_epoch)

    if predictions_out is not None:
        predictions_out.parent.mkdir(parents=True, exist_ok=True)
        kept.reset_index(drop=True).to_parquet(predictions_out)
    confidence = params.evaluation.confidence
    mean = {
        m: {
            t: {k: np.mean([d[k] for d in runs], axis=0) for k in runs[0]}
            for t, runs in per.items()
        }
        for m, per in draws.items()
    }
    table = {m: {t: summary(d, confidence) for t, d in per.items()} for m, per in mean.items()}
    gain = {
        t: summary(
            {
                k: mean["multi_task"][t][k] - mean["single_task"][t][k]
                for k in mean["multi_task"][t]
            },
            confidence,
        )
        for t in tasks
    }
    return {
        "schema": schema.name,
        "model": params.model.name,
        "seeds": seeds,
        "bootstrap_samples": samples,
        "train_examples": len(train),
        "test_examples": len(test),
        "test_positives": {
            t: int(test[t].sum()) for t in tasks if schema.tasks[t].type == "binary"
        },
        "methods": table,
        "multi_minus_single": gain,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--schema", type=Path, required=True)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[7, 8, 9])
    parser.add_argument("--bootstrap", type=int, default=500)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--predictions", type=Path, help="also write the test predictions (per_category.py)"
    )
    add_overrides(parser)
    args = parser.parse_args()
    raw = yaml.safe_load(args.params.read_text()) or {}
    apply_overrides(raw, args.set)
    params = Params.model_validate(raw)
    report = run(load_schema(args.schema), params, args.seeds, args.bootstrap, args.predictions)
    write_json(args.out, report)
    print(
        json.dumps(
            {
                m: {
                    t: {k: round(v, 4) for k, v in r.items() if not k.endswith("interval")}
                    for t, r in per.items()
                }
                for m, per in report["methods"].items()
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    exit_on_error(main)
