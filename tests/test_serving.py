"""The real `shopguide serve` process on the pipeline's champion and materialized Feast store:
ranking responses, parity with the offline model, health endpoints, and a 400 that names the
problem for every malformed request."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from shopguide.config import ServingParams, load_params
from shopguide.feature_spec import ITEM_ATTRIBUTES_VIEW, stat_features, stats_view
from shopguide.features import open_store
from shopguide.model.store import load_model
from shopguide.registry import champion
from tests.conftest import PipelineRun

MAX_CANDIDATES = 50
READY_TIMEOUT_S = 90
UNKNOWN = 999_999_999_999
TASKS = {"cart", "fav", "buy"}


@dataclass(frozen=True)
class Server:
    client: httpx.Client
    process: subprocess.Popen
    serving: ServingParams
    log: Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _log_tail(log: Path) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-30:])


@pytest.fixture(scope="module")
def server(pipeline_run: PipelineRun, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`shopguide serve` in a subprocess, with a small max_candidates so the limit is cheap to
    hit; killed at teardown whatever happened."""
    workdir = tmp_path_factory.mktemp("serve")
    raw = yaml.safe_load(pipeline_run.params_path.read_text())
    raw["serving"]["max_candidates"] = MAX_CANDIDATES
    params = workdir / "params.yaml"
    params.write_text(yaml.safe_dump(raw))
    port, log = _free_port(), workdir / "server.log"
    options = {
        "--params": params,
        "--registry": pipeline_run.registry,
        "--repo": pipeline_run.feature_repo,
        "--http-port": port,
    }
    command = [sys.executable, "-m", "shopguide.cli", "serve"]
    command += [str(x) for option in options.items() for x in option]
    with log.open("w") as out:
        process = subprocess.Popen(command, cwd=workdir, stdout=out, stderr=subprocess.STDOUT)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            if process.poll() is not None:
                pytest.fail(f"server exited with {process.returncode}:\n{_log_tail(log)}")
            try:
                if client.get("/v2/health/ready").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"server not ready after {READY_TIMEOUT_S}s:\n{_log_tail(log)}")
            time.sleep(0.5)
        yield Server(client, process, load_params(params).serving, log)
    finally:
        client.close()
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def known(pipeline_run: PipelineRun) -> tuple[int, list[int]]:
    """The busiest user of the training set and the distinct items it was exposed to."""
    frame = pd.read_parquet(pipeline_run.training_set, columns=["user_id", "item_id"])
    user = int(frame["user_id"].value_counts().index[0])
    items = frame.loc[frame["user_id"] == user, "item_id"].drop_duplicates().head(12)
    return user, [int(i) for i in items]


def predict(server: Server, instances: list[dict]) -> dict:
    response = server.client.post("/v1/models/shopguide:predict", json={"instances": instances})
    assert response.status_code == 200, response.text
    return response.json()


def test_health_endpoints_answer(server: Server) -> None:
    for path in ("/v2/health/live", "/v2/health/ready", "/v2/models/shopguide/ready"):
        assert server.client.get(path).status_code == 200, path
    response = server.client.get("/v1/models/shopguide")
    assert response.status_code == 200
    assert response.json() == {"name": "shopguide", "ready": True}


def test_predict_ranks_every_candidate(
    server: Server, pipeline_run: PipelineRun, known: tuple[int, list[int]]
) -> None:
    user, items = known
    body = predict(server, [{"user_id": user, "item_ids": items}])
    version = champion(pipeline_run.registry).name
    assert body["model_version"] == version
    (pred,) = body["predictions"]
    assert pred["model_version"] == version
    assert pred["user_id"] == user
    assert pred["unknown_user"] is False
    assert [i["item_id"] for i in pred["items"]] == items  # request order
    weights = server.serving.ranking_weights
    for item in pred["items"]:
        assert item["unknown_item"] is False
        assert set(item["scores"]) == TASKS
        assert all(0.0 < p < 1.0 for p in item["scores"].values())
        expected = sum(weights[t] * p for t, p in item["scores"].items())
        assert item["score"] == pytest.approx(expected, rel=1e-5)
    score = {i["item_id"]: i["score"] for i in pred["items"]}
    # A permutation of the request, by score descending; ties keep the request order.
    assert pred["ranked_item_ids"] == sorted(items, key=lambda i: -score[i])
    assert len(set(score.values())) > 1, "every candidate got the same score"


def test_unknown_ids_are_served_and_flagged(server: Server, known: tuple[int, list[int]]) -> None:
    user, items = known
    body = predict(
        server,
        [
            {"user_id": UNKNOWN, "item_ids": [items[0], UNKNOWN]},
            {"user_id": user, "item_ids": [UNKNOWN]},
        ],
    )
    cold, warm = body["predictions"]
    assert cold["unknown_user"] is True
    assert [i["unknown_item"] for i in cold["items"]] == [False, True]
    assert warm["unknown_user"] is False
    assert [i["unknown_item"] for i in warm["items"]] == [True]
    for pred in (cold, warm):
        for item in pred["items"]:
            assert all(0.0 < p < 1.0 for p in item["scores"].values())


def _offline_scores(run: PipelineRun, pairs: list[tuple[int, int]]) -> dict[str, np.ndarray]:
    """Task probabilities of (user, item) pairs computed without the serving code: one Feast
    read per pair and view, assembled by feature name, run through the champion."""
    net = load_model(champion(run.registry).path)
    store = open_store(run.feature_repo)

    def read(view: str, key: str, value: int | None, features: list[str]) -> dict:
        if value is None:  # an unknown item has no category to read
            return {f"{view}__{f}": None for f in features}
        row = store.get_online_features(
            features=[f"{view}:{f}" for f in features],
            entity_rows=[{key: value}],
            full_feature_names=True,
        ).to_dict()
        return {name: values[0] for name, values in row.items() if "__" in name}

    rows, categories = [], []
    for user, item in pairs:
        category = read(ITEM_ATTRIBUTES_VIEW, "item_id", item, ["category_id"])
        category_id = category[f"{ITEM_ATTRIBUTES_VIEW}__category_id"]
        categories.append(category_id or 0)
        values = {
            **read(stats_view("user"), "user_id", user, stat_features()),
            **read(stats_view("item"), "item_id", item, stat_features()),
            **read(stats_view("category"), "category_id", category_id, stat_features()),
        }
        rows.append([values[name] or 0.0 for name in net.config.dense_features])
    users, items = zip(*pairs, strict=True)
    with torch.no_grad():
        logits = net(
            torch.tensor(users),
            torch.tensor(items),
            torch.tensor(categories),
            torch.tensor(rows, dtype=torch.float32),
        )
    probs = torch.sigmoid(logits).numpy()
    return {task: probs[:, j] for j, task in enumerate(net.config.tasks)}


def test_served_scores_equal_the_offline_model(
    server: Server, pipeline_run: PipelineRun, known: tuple[int, list[int]]
) -> None:
    """Two instances in one request (the server scores them as one batch), with known and
    unknown users and items."""
    user, items = known
    instances = [
        {"user_id": user, "item_ids": [*items, UNKNOWN]},
        {"user_id": UNKNOWN, "item_ids": items[:3]},
    ]
    body = predict(server, instances)
    pairs = [(inst["user_id"], item) for inst in instances for item in inst["item_ids"]]
    offline = _offline_scores(pipeline_run, pairs)
    assert set(offline) == TASKS
    served = [item for pred in body["predictions"] for item in pred["items"]]
    assert [i["item_id"] for i in served] == [item for _, item in pairs]
    for task, expected in offline.items():
        got = np.array([i["scores"][task] for i in served])
        np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0, err_msg=task)


TOO_MANY = list(range(1, MAX_CANDIDATES + 2))
HALF = list(range(1, MAX_CANDIDATES // 2 + 2))
JSON = {"content-type": "application/json"}
MALFORMED = {
    "not-json": (dict(content=b"{not json", headers=JSON), "Unrecognized request format"),
    "empty-body": (dict(content=b"", headers=JSON), "Unrecognized request format"),
    "not-utf8": (dict(content=b"\xff\xfe", headers=JSON), "Unrecognized request format"),
    "json-list": (dict(json=[{"user_id": 1, "item_ids": [2]}]), "must be a JSON object"),
    "json-null": (dict(content=b"null", headers=JSON), "must be a JSON object"),
    "plain-text": (
        dict(content=b"1 2 3", headers={"content-type": "text/plain"}),
        "must be a JSON object",
    ),
    "no-instances": (dict(json={}), "instances: Field required"),
    "instances-empty": (dict(json={"instances": []}), "instances: List should have at least 1"),
    "instances-not-list": (dict(json={"instances": {"user_id": 1}}), '"instances" to be a list'),
    "no-user-id": (
        dict(json={"instances": [{"item_ids": [1]}]}),
        "instances.0.user_id: Field required",
    ),
    "user-id-string": (
        dict(json={"instances": [{"user_id": "abc", "item_ids": [1]}]}),
        "instances.0.user_id: Input should be a valid integer (got 'abc')",
    ),
    "item-ids-not-list": (
        dict(json={"instances": [{"user_id": 1, "item_ids": 5}]}),
        "instances.0.item_ids: Input should be a valid list",
    ),
    "item-ids-empty": (
        dict(json={"instances": [{"user_id": 1, "item_ids": []}]}),
        "instances.0.item_ids: List should have at least 1",
    ),
    "negative-user": (
        dict(json={"instances": [{"user_id": -1, "item_ids": [1]}]}),
        "instances.0.user_id: Input should be greater than or equal to 0",
    ),
    "negative-item": (
        dict(json={"instances": [{"user_id": 1, "item_ids": [1, -5]}]}),
        "instances.0.item_ids.1: Input should be greater than or equal to 0",
    ),
    "float-id": (
        dict(json={"instances": [{"user_id": 1, "item_ids": [1.5]}]}),
        "instances.0.item_ids.0: Input should be a valid integer",
    ),
    "integral-float-id": (
        dict(json={"instances": [{"user_id": 2.0, "item_ids": [1]}]}),
        "instances.0.user_id: Input should be a valid integer",
    ),
    "boolean-id": (
        dict(json={"instances": [{"user_id": True, "item_ids": [1]}]}),
        "instances.0.user_id: Input should be a valid integer",
    ),
    "id-over-int64": (
        dict(json={"instances": [{"user_id": 2**63, "item_ids": [1]}]}),
        "instances.0.user_id: Input should be less than or equal to",
    ),
    "too-many-candidates": (
        dict(json={"instances": [{"user_id": 1, "item_ids": TOO_MANY}]}),
        f"has {len(TOO_MANY)} candidates, over the limit of {MAX_CANDIDATES}",
    ),
    "too-many-in-all": (
        dict(json={"instances": [{"user_id": 1, "item_ids": HALF}] * 2}),
        f"in all, over the limit of {MAX_CANDIDATES}",
    ),
    "extra-top-level-field": (
        dict(json={"instances": [{"user_id": 1, "item_ids": [1]}], "top_k": 3}),
        "top_k: Extra inputs are not permitted",
    ),
    "extra-instance-field": (
        dict(json={"instances": [{"user_id": 1, "item_ids": [1], "device": "ios"}]}),
        "instances.0.device: Extra inputs are not permitted",
    ),
}


@pytest.mark.parametrize(("request_kwargs", "message"), MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_request_gets_400_naming_the_problem(
    server: Server, request_kwargs: dict, message: str
) -> None:
    response = server.client.post("/v1/models/shopguide:predict", **request_kwargs)
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert message in response.json()["error"]


def test_server_still_serves_after_bad_requests(
    server: Server, known: tuple[int, list[int]]
) -> None:
    user, items = known
    assert server.process.poll() is None, _log_tail(server.log)
    body = predict(server, [{"user_id": user, "item_ids": items[:2]}])
    assert len(body["predictions"][0]["items"]) == 2
    assert server.client.get("/v2/health/ready").status_code == 200
