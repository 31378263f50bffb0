"""Latency of a declared dataset's predictor (`shopguide dataset serve`): v2 requests of the
test examples' request-time fields, sent one after another to the real server process, each
scored with its lookups and history read from the generated Feast repo's online store (Feast's
`get_online_features`, one call per view). Reports p50 / p99 milliseconds and rows per second
per request size.

    shopguide dataset train datasets/olist.yaml --params datasets/olist.params.yaml
    shopguide dataset features datasets/olist.yaml --params datasets/olist.params.yaml
    python benchmarks/declared_serving.py datasets/olist.yaml --requests 200 --rows 1 20 100
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import httpx
import numpy as np

from shopguide.config import load_params
from shopguide.dataset.examples import joined_rows
from shopguide.dataset.online import request_columns
from shopguide.dataset.schema import load_schema
from shopguide.errors import exit_on_error
from shopguide.io import write_json
from shopguide.serving.declared import v2_inputs
from shopguide.serving.process import running_server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("schema", type=Path)
    parser.add_argument("--params", type=Path, default=Path("datasets/olist.params.yaml"))
    parser.add_argument("--model-dir", type=Path, default=Path("artifacts/datasets/model"))
    parser.add_argument("--repo", type=Path, default=Path("artifacts/datasets/feature_repo"))
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 20, 100])
    parser.add_argument(
        "--out", type=Path, default=Path("benchmarks/results/declared-serving.json")
    )
    args = parser.parse_args()
    logging.getLogger("httpx").setLevel(logging.WARNING)
    schema, params = load_schema(args.schema), load_params(args.params)
    fields = joined_rows(schema)[request_columns(schema)].reset_index(drop=True)
    rng = np.random.default_rng(0)
    results = {"dataset": schema.name, "requests": args.requests, "sizes": {}}
    server = running_server(params, args.repo, model_dir=args.model_dir, declared=True)
    with server as (url, _, _), httpx.Client(base_url=url, timeout=60) as client:
        path = f"/v2/models/{schema.name}/infer"
        for rows in args.rows:
            bodies = [
                {"inputs": v2_inputs(schema, fields.iloc[rng.integers(0, len(fields), rows)])}
                for _ in range(args.requests + 5)
            ]
            for body in bodies[:5]:  # warm-up
                client.post(path, json=body).raise_for_status()
            seconds = []
            for body in bodies[5:]:
                start = time.perf_counter()
                client.post(path, json=body).raise_for_status()
                seconds.append(time.perf_counter() - start)
            ms = np.asarray(seconds) * 1000
            results["sizes"][str(rows)] = {
                "p50_ms": round(float(np.percentile(ms, 50)), 1),
                "p99_ms": round(float(np.percentile(ms, 99)), 1),
                "rows_per_s": round(rows * len(ms) / float(np.sum(seconds)), 1),
            }
    write_json(args.out, results)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    exit_on_error(main)
