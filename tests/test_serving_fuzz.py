"""Fuzzing a real `shopguide serve`: random and hostile requests (Hypothesis, plus the cases of
issue 27, sized to the test server's body limit), each sent alongside a valid one. Every answer
is a 2xx or 4xx with a short body, the valid request is answered within 100 ms whatever the
hostile one holds, the log grows by a few hundred bytes per request at most, and the server
stops on SIGTERM within its grace period."""

from __future__ import annotations

import json
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from shopguide.serving.process import running_server
from shopguide.serving.server import GRACE_PERIOD_S
from tests.conftest import PipelineRun

MAX_CANDIDATES = 50
MAX_REQUEST_BYTES = 20_000
VALID_WITHIN_S = 0.100
TRIES = 3  # a slow valid answer is re-measured: noise passes, a stall repeats every time
V1 = "/v1/models/shopguide:predict"
V2 = "/v2/models/shopguide/infer"
VALID = json.dumps({"instances": [{"user_id": 1, "item_ids": [2, 3, 4]}]}).encode()
JSON = {"content-type": "application/json"}

leaves = (
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=30)
)
values = st.recursive(
    leaves,
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=12), inner),
    max_leaves=25,
)
ids = st.integers(-(2**65), 2**65) | st.integers(0, 2**40) | values
instance = st.fixed_dictionaries(
    {"user_id": ids, "item_ids": st.lists(ids, max_size=MAX_CANDIDATES + 5) | values},
    optional={"extra": values},
)
v1_bodies = st.fixed_dictionaries({"instances": st.lists(instance, max_size=4) | values}) | values
DATATYPES = ["INT64", "INT32", "INT16", "INT8", "UINT64", "UINT32", "UINT16", "UINT8"]
tensor = st.fixed_dictionaries(
    {
        "name": st.sampled_from(["user_id", "item_id"]) | st.text(max_size=20),
        "datatype": st.sampled_from([*DATATYPES, "int64", "FP32", "BYTES", "BOOL"])
        | st.text(max_size=8),
        "shape": st.lists(st.integers(-2, MAX_CANDIDATES + 5) | leaves, max_size=3),
        "data": st.lists(ids, max_size=MAX_CANDIDATES + 5) | values,
    }
)
v2_bodies = (
    st.fixed_dictionaries(
        {"inputs": st.lists(tensor, max_size=4) | values},
        optional={"id": leaves, "outputs": values, "parameters": values},
    )
    | values
)
content_types = st.sampled_from(
    [None, "application/json", "text/plain", "application/cloudevents+json", "application/x"]
)


def _json_request(path: str, body: object, content_type: str | None) -> tuple:
    headers = {} if content_type is None else {"content-type": content_type}
    return path, json.dumps(body).encode(), headers


requests = (
    st.builds(_json_request, st.just(V1), v1_bodies, content_types)
    | st.builds(_json_request, st.just(V2), v2_bodies, content_types)
    | st.tuples(st.sampled_from([V1, V2]), st.binary(max_size=2000), st.just(JSON))
    # near and over the body limit: long field names, long lists
    | st.builds(
        lambda n, path: (path, json.dumps({"k" * n: 1, "instances": []}).encode(), JSON),
        st.integers(1_000, MAX_REQUEST_BYTES + 2_000),
        st.sampled_from([V1, V2]),
    )
)


def _deep(path: str, depth: int) -> tuple:
    return path, b"[" * depth + b"]" * depth, JSON


def _v2(user: dict, items: dict | None = None) -> tuple:
    items = items or {"name": "item_id", "datatype": "INT64", "shape": [2], "data": [2, 3]}
    return V2, json.dumps({"inputs": [user, items]}).encode(), JSON


ISSUE_27 = [
    # an unknown field with a long name (20 KB froze the server for 10.8 s)
    (V1, json.dumps({"instances": [{"user_id": 1, "item_ids": [2], "k" * 15_000: 1}]}), JSON),
    # many string ids (20,000 held a valid request for 16.4 s)
    (V1, json.dumps({"instances": [{"user_id": 1, "item_ids": ["x"] * 3_000}]}), JSON),
    (V1, json.dumps({"instances": [{"user_id": 1, "item_ids": [2]}] * 1_500}), JSON),
    (V1, json.dumps({"instances": [{"user_id": 1, "item_ids": [2]}], "top_k": [[]] * 4_000}), {}),
    _deep(V1, 9_000),
    _deep(V2, 9_000),
    _v2({"name": "user_id", "datatype": "INT64", "shape": ["1"], "data": [1]}),
    _v2({"name": "user_id", "datatype": "INT64", "shape": [1.0], "data": [1]}),
    _v2({"name": "user_id", "datatype": "INT8", "shape": [1], "data": [3964153]}),
    _v2({"name": "user_id", "datatype": "UINT8", "shape": [1], "data": [3964153]}),
    _v2({"name": "user_id", "datatype": "INT32", "shape": [1], "data": [2**31]}),
    _v2({"name": "user_id", "datatype": "int64", "shape": [1], "data": [1]}),
    _v2({"name": "u" * 15_000, "datatype": "INT64", "shape": [1], "data": [1]}),
    _v2({"name": "user_id", "datatype": "INT64", "shape": [1], "data": ["x"] * 3_000}),
    (V2, json.dumps({"inputs": [{}] * 4_000}), JSON),
]


@pytest.fixture(scope="module")
def server(pipeline_run: PipelineRun, tmp_path_factory: pytest.TempPathFactory):
    p = pipeline_run.params
    serving = p.serving.model_copy(
        update={
            "max_candidates": MAX_CANDIDATES,
            "max_request_bytes": MAX_REQUEST_BYTES,
            "reload_interval_s": 0,
        }
    )
    infra = p.gate.infra.model_copy(update={"candidates": MAX_CANDIDATES})
    params = p.model_copy(
        update={"serving": serving, "gate": p.gate.model_copy(update={"infra": infra})}
    )
    workdir = tmp_path_factory.mktemp("fuzz")
    with running_server(
        params, pipeline_run.feature_repo, registry=pipeline_run.registry, workdir=workdir
    ) as running:
        yield running


def _valid_latency(valid: httpx.Client) -> float:
    started = time.perf_counter()
    response = valid.post(V1, content=VALID, headers=JSON)
    elapsed = time.perf_counter() - started
    assert response.status_code == 200, response.text
    return elapsed


def test_hostile_requests_get_4xx_and_never_hold_up_a_valid_one(server) -> None:
    url, process, log = server
    sent = 0
    with (
        httpx.Client(base_url=url, timeout=30) as hostile_client,
        httpx.Client(base_url=url, timeout=30) as valid,
        ThreadPoolExecutor(max_workers=1) as pool,
    ):
        _valid_latency(valid)  # warm connection
        log_before = log.stat().st_size

        @settings(
            max_examples=400,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(requests)
        def exchange(request: tuple) -> None:
            nonlocal sent
            path, content, headers = request
            content = content.encode() if isinstance(content, str) else content
            latencies = []
            for _ in range(TRIES):
                answer = pool.submit(hostile_client.post, path, content=content, headers=headers)
                time.sleep(0.002)  # the hostile request goes first
                latencies.append(_valid_latency(valid))
                response = answer.result()
                sent += 1
                assert response.status_code < 500, (response.status_code, response.text[:500])
                if response.status_code >= 400:
                    assert len(response.content) < 2_000, response.text[:500]
                if latencies[-1] <= VALID_WITHIN_S:
                    return
            pytest.fail(f"a valid request took {latencies} s beside {content[:200]!r}")

        for case in ISSUE_27:  # tried first, before the generated ones
            exchange = example(case)(exchange)
        exchange()
    assert process.poll() is None
    grown = log.stat().st_size - log_before
    assert grown < 2_000 * sent, f"{grown} bytes of log for {sent} requests"


def test_server_stops_on_sigterm_within_its_grace_period(server) -> None:
    url, process, log = server
    with httpx.Client(base_url=url, timeout=30) as client:  # an open keep-alive connection
        assert client.post(V1, content=VALID, headers=JSON).status_code == 200
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        returncode = process.wait(timeout=GRACE_PERIOD_S + 5)
    assert time.monotonic() - started < GRACE_PERIOD_S
    assert returncode == 0, Path(log).read_text()[-2000:]
