"""Issue 27's hostile requests against a fresh `shopguide serve` (the registry's champion, on a
free loopback port, logging at INFO), each sent alongside a valid request:

    python benchmarks/hostile_requests.py [--params params.yaml] [--out result.json]

Per case: the hostile request's status and answer size, the time to its answer, the time to
the valid request's answer (sent 5 ms after it), and how much the server log grew. Prints a
Markdown table; every phase has a deadline and the server is stopped at the end.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
V1 = "/v1/models/shopguide:predict"
V2 = "/v2/models/shopguide/infer"
VALID = {"instances": [{"user_id": 1, "item_ids": [2, 3]}]}
TIMEOUT_S = 120


def _v2(tensor: dict) -> dict:
    items = {"name": "item_id", "datatype": "INT64", "shape": [2], "data": [2, 3]}
    return {"inputs": [{"name": "user_id", "shape": [1], **tensor}, items]}


CASES = {
    **{
        f"v1, unknown field of {n // 1000} KB": (
            V1,
            {"instances": [{"user_id": 1, "item_ids": [2], "k" * n: 1}]},
        )
        for n in (5_000, 10_000, 20_000)
    },
    "v1, 20,000 string ids": (V1, {"instances": [{"user_id": 1, "item_ids": ["x"] * 20_000}]}),
    'v2, shape ["1"]': (V2, _v2({"datatype": "INT64", "shape": ["1"], "data": [1]})),
    "v2, INT8 carrying 3964153": (V2, _v2({"datatype": "INT8", "data": [3964153]})),
    "v2, INT32 carrying 2^31": (V2, _v2({"datatype": "INT32", "data": [2**31]})),
    "v2, datatype int64": (V2, _v2({"datatype": "int64", "data": [1]})),
}


def exchange(url: str, path: str, body: dict, log: Path) -> dict:
    before = log.stat().st_size
    with (
        httpx.Client(base_url=url, timeout=TIMEOUT_S) as hostile,
        httpx.Client(base_url=url, timeout=TIMEOUT_S) as valid,
        ThreadPoolExecutor(max_workers=1) as pool,
    ):
        valid.post(V1, json=VALID).raise_for_status()  # connected and warm

        def send() -> tuple[httpx.Response, float]:
            started = time.perf_counter()
            response = hostile.post(path, json=body)
            return response, time.perf_counter() - started

        answer = pool.submit(send)
        time.sleep(0.005)
        started = time.perf_counter()
        valid_status = valid.post(V1, json=VALID).status_code
        valid_s = time.perf_counter() - started
        response, hostile_s = answer.result()
    time.sleep(0.5)  # the log is written by a background thread (or was, before issue 27)
    return {
        "status": response.status_code,
        "answer_bytes": len(response.content),
        "hostile_s": hostile_s,
        "valid_status": valid_status,
        "valid_s": valid_s,
        "log_bytes": log.stat().st_size - before,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--registry", type=Path, help="default: registry.path of --params")
    parser.add_argument("--repo", type=Path, help="Feast repo; default features.repo")
    parser.add_argument("--out", type=Path, help="results JSON")
    args = parser.parse_args()

    from shopguide.config import load_params
    from shopguide.serving.process import running_server

    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request otherwise
    params = load_params(args.params)
    results = {}
    with running_server(
        params,
        args.repo or params.features.repo,
        registry=args.registry or params.registry.path,
        extra_env={"SHOPGUIDE_LOG_LEVEL": "INFO"},
    ) as (url, _, log):
        for name, (path, body) in CASES.items():
            results[name] = exchange(url, path, body, log)
    print("| request | answer | answer bytes | its time s | valid request's time s | log bytes |")
    print("|---|---|---|---|---|---|")
    for name, r in results.items():
        print(
            f"| {name} | {r['status']} | {r['answer_bytes']:,} | {r['hostile_s']:.3f} | "
            f"{r['valid_s']:.3f} ({r['valid_status']}) | {r['log_bytes']:,} |"
        )
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    from shopguide.errors import exit_on_error

    sys.exit(exit_on_error(main))
