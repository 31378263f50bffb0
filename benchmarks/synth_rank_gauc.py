"""Synthetic truth for ranking: one trained model's GAUC on a synth run's test exposures and its
taobao-rank-v1 metrics, beside the heuristics and the Bayes-optimal figures of the generator
(`<run>/bayes.json`), with the share of the gap from item popularity's GAUC to the Bayes GAUC
that the model closes. Scored with taobao_rank.py's own functions.

    nice python benchmarks/synth_rank_gauc.py --run /tmp/synth1m \
        --model /tmp/synth1m/rank/mmoe-seed1/pretrained

<run>: the output dir of benchmarks/synth_scale.py; the model: any trained model dir (e.g. one
that taobao_rank.py --truth trained under its --workdir). Writes <run>/synth_rank_gauc.json.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from taobao_rank import gauc_summary, heuristics

from shopguide.errors import exit_on_error
from shopguide.evaluate import checked_probabilities
from shopguide.io import read_json, write_json
from shopguide.model.store import load_model
from shopguide.model.tensors import exposures_of, read_training_set
from shopguide.ranking.metrics import query_scores, summary
from shopguide.ranking.queries import ranked_tasks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--bootstrap", type=int, default=200)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    examples = read_training_set(args.run / "training_set.parquet")
    exposures = examples[(examples["split"] == "test") & exposures_of(examples)]
    exposures = exposures.reset_index(drop=True)
    ranking = pd.read_parquet(args.run / "ranking_set.parquet")
    test = ranking[ranking["split"] == "test"].reset_index(drop=True)
    model = load_model(args.model)
    scored = {
        "model": (checked_probabilities(model, exposures), checked_probabilities(model, test))
    }
    on_exposures, on_queries = heuristics(exposures, args.seed), heuristics(test, args.seed)
    bayes = read_json(args.run / "bayes.json")
    users = exposures["user_id"].to_numpy()
    out: dict = {"model": str(args.model), "test_exposures": len(exposures)}
    for task in ranked_tasks(model.config.tasks):
        j = model.config.tasks.index(task)
        y = exposures[task].to_numpy(np.float64)
        rows = (test["task"] == task).to_numpy()
        q = test.loc[rows]
        methods = {"model": (scored["model"][0][:, j], scored["model"][1][:, j])}
        methods |= {n: (on_exposures[n], on_queries[n]) for n in on_exposures}
        row: dict = {"positives": int(y.sum()), "bayes": {"gauc": bayes["gauc"][task]}}
        row["bayes"] |= {m: bayes["ranking"][task][m] for m in ("mrr", "auc")}
        for name, (x, s) in methods.items():
            gauc = gauc_summary(y, [x], users, args.bootstrap)
            ranked = query_scores(q["query_id"], q["user_id"], q["positive"], s[rows])
            row[name] = gauc | summary(ranked, args.bootstrap, 0.95, 7)
        popularity = row["item popularity"]["gauc"]
        row["gap_closed"] = (row["model"]["gauc"] - popularity) / (
            row["bayes"]["gauc"] - popularity
        )
        out[task] = row
    write_json(args.run / "synth_rank_gauc.json", out)


if __name__ == "__main__":
    exit_on_error(main)
