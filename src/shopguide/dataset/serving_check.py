"""The gate's serving check for a declared dataset's model (`gate.infra`): the candidate behind
a real `shopguide dataset serve` on a free loopback port must start, answer v2 and v1 requests
of test rows (their request-time fields, the rest looked up in the dataset's Feast repo) with
what the model gives offline for the same rows and online features, and keep its p99 latency
within budget. The same rules, and the same refusal for a server that fails, as the event-log
pipeline's check (`shopguide.gate.infra_checks`)."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd

from shopguide.config import Params
from shopguide.dataset.examples import joined_rows, splits
from shopguide.dataset.learn import predictions
from shopguide.dataset.online import OnlineFeatures, request_columns
from shopguide.dataset.schema import DatasetSchema
from shopguide.errors import ShopguideError
from shopguide.gate import latency_summary, serving_refusal, serving_verdicts
from shopguide.model.store import load_model
from shopguide.serving.declared import v2_inputs
from shopguide.serving.process import log_tail, running_server

V1_ROWS = 3  # rows of the one v1 request: that protocol's parity, not its speed


def request_rows(schema: DatasetSchema, root: Path | None, rows: int) -> pd.DataFrame:
    """The request-time fields of the last `rows` test rows (the rows a request would carry)."""
    joined = joined_rows(schema, root)
    test = joined[splits(joined, schema) == "test"]
    if test.empty:
        raise ShopguideError(f"dataset {schema.name}: no test rows to send the served model")
    return test[request_columns(schema)].iloc[-rows:].reset_index(drop=True)


def _served(reply: httpx.Response, what: str, log_path: Path) -> dict:
    if reply.status_code != 200:
        raise ShopguideError(
            f"the server answered {reply.status_code} to {what}: {reply.text[:500]}\n"
            f"{log_tail(log_path)}"
        )
    return reply.json()


def serving_checks(
    model_dir: Path,
    feature_repo: Path,
    schema: DatasetSchema,
    params: Params,
    root: Path | None = None,
) -> tuple[list[dict], dict]:
    """(checks, details) of the serving check; never raises for a failing server."""
    infra = params.gate.infra
    rows = request_rows(schema, root, infra.requests * infra.candidates)
    batches = [rows.iloc[i : i + infra.candidates] for i in range(0, len(rows), infra.candidates)]
    details: dict = {"requests": len(batches), "rows_per_request": infra.candidates}
    v2_path, v1_path = f"/v2/models/{schema.name}/infer", f"/v1/models/{schema.name}:predict"
    started = time.monotonic()
    try:
        with running_server(
            params,
            feature_repo,
            model_dir,
            timeout_s=infra.startup_timeout_s,
            declared=True,
        ) as (url, _, log_path):
            details["startup_s"] = round(time.monotonic() - started, 2)
            served, latencies = [], []
            with httpx.Client(base_url=url, timeout=30) as client:
                for batch in batches[:3]:  # warm-up, not timed
                    client.post(v2_path, json={"inputs": v2_inputs(schema, batch)})
                for batch in batches:
                    body = {"inputs": v2_inputs(schema, batch)}
                    t0 = time.perf_counter()
                    reply = client.post(v2_path, json=body)
                    latencies.append((time.perf_counter() - t0) * 1000)
                    served.append(_served(reply, "a test request", log_path))
                first = v2_inputs(schema, rows.iloc[:V1_ROWS])
                instances = [
                    {i["name"]: i["data"][r] for i in first} for r in range(len(first[0]["data"]))
                ]
                v1 = _served(
                    client.post(v1_path, json={"instances": instances}), "a v1 request", log_path
                )
    except (ShopguideError, httpx.HTTPError, ValueError, KeyError, IndexError) as exc:
        return serving_refusal(exc, details)
    offline = predictions(
        load_model(model_dir), OnlineFeatures(feature_repo, schema).served_frame(rows), schema
    )
    try:
        diff = 0.0
        for task, expected in offline.items():
            expected = np.asarray(expected, float)
            got = np.concatenate(
                [
                    np.asarray(
                        next(o for o in reply["outputs"] if o["name"] == task)["data"], float
                    ).reshape((len(batch), *expected.shape[1:]))
                    for reply, batch in zip(served, batches, strict=True)
                ]
            )
            got_v1 = np.asarray([p[task] for p in v1["predictions"]], float)
            diff = max(
                diff,
                float(np.abs(got - expected).max(initial=0)),
                float(np.abs(got_v1 - expected[: len(got_v1)]).max(initial=0)),
            )
    except (ValueError, KeyError, IndexError, TypeError, StopIteration) as exc:
        return serving_refusal(exc, details)  # answers of the wrong shape
    details |= {"max_abs_diff": diff, "latency_ms": latency_summary(latencies)}
    details["model_version_served"] = served[0].get("model_version")
    scope = f"{len(rows)} test rows (v2) and {len(got_v1)} (v1)"
    request = f"up to {infra.candidates} rows"
    return serving_verdicts(diff, latencies, infra, scope, request), details
