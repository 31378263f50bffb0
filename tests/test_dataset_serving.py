"""A declared dataset served, on the real Olist sample: `shopguide dataset features` generates
and applies the Feast repo from the schema; the online rows a request describes equal the
offline examples (lookups exactly, history as of the data's end, counted by brute force); the
real `shopguide dataset serve` process scores (customer, product, seller) rows through v2 and
v1 as the model does offline; every malformed request gets a 400 that names the field."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import yaml

from shopguide.config import Params, load_params
from shopguide.dataset.examples import build_examples, joined_rows
from shopguide.dataset.gate import gate_step
from shopguide.dataset.learn import predictions
from shopguide.dataset.online import OnlineFeatures, request_columns
from shopguide.dataset.schema import SCHEMA_FILE, DatasetSchema, load_schema, saved_schema
from shopguide.dataset.steps import train_step
from shopguide.errors import ShopguideError
from shopguide.features import open_store
from shopguide.model.base import MultiTaskModel
from shopguide.model.store import load_model
from shopguide.registry import champion, register, versions
from shopguide.serving.declared import same_inputs, v2_inputs
from shopguide.serving.process import running_server
from tests.test_dataset_model import (
    dataset_cli,
    olist_schema,
    readme_block,
    write_shop_files,
    write_yaml,
)

ROWS = 20


@dataclass(frozen=True)
class Served:
    schema: DatasetSchema
    params: Params
    model_dir: Path
    repo: Path
    examples: pd.DataFrame
    request: pd.DataFrame  # test rows' request-time fields


@pytest.fixture(scope="module")
def served(olist: Path, tmp_path_factory: pytest.TempPathFactory) -> Served:
    work = tmp_path_factory.mktemp("olist_serving")
    schema_path = olist_schema(work, olist)
    raw = {
        "train": {"batch_size": 128, "learning_rate": 0.005, "max_epochs": 1},
        "evaluation": {"bootstrap_samples": 20},
    }
    params_path = write_yaml(work / "params.yaml", raw)
    params = Params.model_validate(raw)
    model_dir, repo = work / "model", work / "feature_repo"
    train_step(
        schema_path,
        params,
        model_dir,
        work / "m.json",
        work / "h.csv",
        work / "reports",
        work / "examples.parquet",
    )
    done = dataset_cli(
        work, "features", str(schema_path), "--repo", str(repo), "--params", str(params_path)
    )
    assert done.returncode == 0, done.stderr[-3000:]
    schema = load_schema(schema_path)
    rows = joined_rows(schema)
    test = rows[rows[schema.time] >= pd.Timestamp(schema.split.test_start).timestamp()]
    request = test[request_columns(schema)].iloc[-ROWS:].reset_index(drop=True)
    return Served(schema, params, model_dir, repo, build_examples(schema), request)


def test_the_request_carries_the_order_and_the_store_the_rest(served: Served) -> None:
    fields = request_columns(served.schema)
    assert {f.partition(".")[0] for f in fields} == {"orders", "order_items", "payments"}
    assert "order_items.product_id" in fields and "orders.customer_id" in fields
    views = {v.name for v in open_store(served.repo).list_feature_views()}
    assert views == {
        "lookup_products",
        "lookup_sellers",
        "lookup_customers",
        "history_order_items__seller_id",
        "history_order_items__product_id",
        "history_customers__customer_unique_id",
        "history_customers__customer_state",
    }


def test_online_rows_equal_the_offline_examples(served: Served) -> None:
    online = OnlineFeatures(served.repo, served.schema)
    got = online.served_frame(served.request)
    examples = served.examples
    rows = joined_rows(served.schema)
    # The same rows offline: the last ROWS test rows, in the same order.
    offline = examples[examples["split"] == "test"].iloc[-ROWS:].reset_index(drop=True)
    assert (offline["t0"].to_numpy() == got["t0"].to_numpy()).all()
    for name in served.schema.features:  # lookups and request-time fields alike
        pd.testing.assert_series_equal(
            got[name], offline[name], check_dtype=False, check_names=False
        )
    assert len(rows) == len(examples)
    # History as of the data's end: every example counts (known before it), brute force.
    for key, column in (("seller", "seller_id"), ("item_id", "product_id"), ("user_id", None)):
        count = examples.groupby(key).size()
        feature = f"{column or 'customer_unique_id'}_count"
        expected = count.reindex(offline[key]).to_numpy(np.float64)
        np.testing.assert_array_equal(got[feature].to_numpy(), expected)
    means = examples.groupby("seller")["bad_review"].mean().reindex(offline["seller"])
    np.testing.assert_allclose(got["seller_id_bad_review_mean"], means.to_numpy(), rtol=1e-12)
    late = examples.groupby("customer_state")["late"].mean().reindex(offline["customer_state"])
    np.testing.assert_allclose(got["customer_state_late_mean"], late.to_numpy(), rtol=1e-12)


def test_an_unknown_product_is_scored_without_its_attributes(served: Served) -> None:
    online = OnlineFeatures(served.repo, served.schema)
    request = served.request.iloc[:2].copy()
    request["order_items.product_id"] = pd.array(["never-sold", "never-sold"], dtype="string")
    got = online.served_frame(request)
    assert got["weight_g"].isna().all() and got["photos"].isna().all()
    assert (got["product_id_count"] == 0).all() and got["product_id_bad_review_mean"].isna().all()
    assert got["seller_id_count"].notna().all()  # the seller is still known


def test_a_repo_of_another_dataset_or_schema_version_is_refused(served: Served) -> None:
    other = served.schema.model_copy(update={"name": "shops"})
    with pytest.raises(ShopguideError, match="holds the features of dataset 'olist'"):
        OnlineFeatures(served.repo, other)
    changed = served.schema.model_copy(update={"features": {}})
    with pytest.raises(ShopguideError, match="features differ"):
        same_inputs(changed, saved_schema(served.repo))


def test_the_gate_serves_the_candidate_and_refuses_a_server_that_fails(
    served: Served, tmp_path: Path
) -> None:
    """The declared gate's serving check: the candidate behind a real `dataset serve` answers
    the test rows as offline; a repo of another schema version (the server refuses to start)
    is a refusal with the server's words, no repo at all a clear error."""
    gate = served.params.gate
    infra = gate.infra.model_copy(update={"requests": 4, "candidates": 25, "p99_latency_ms": 5e3})
    params = served.params.model_copy(
        update={"gate": gate.model_copy(update={"bootstrap_samples": 20, "infra": infra})}
    )
    examples = served.model_dir.parent / "examples.parquet"

    def judged(repo: Path) -> dict:
        return gate_step(
            served.model_dir,
            examples,
            tmp_path / "registry",
            tmp_path / "d.json",
            params,
            feature_repo=repo,
        )

    decision = judged(served.repo)
    checks = {c["rule"]: c for c in decision["checks"]}
    assert checks["serving_parity"]["passed"] and checks["serving_parity"]["value"] <= 1e-5
    assert any("over 100 test rows (v2) and 3 (v1)" in r for r in decision["reasons"])
    assert checks["serving_p99_latency"]["passed"]

    stale = Path(shutil.copytree(served.repo, tmp_path / "stale"))
    saved = json.loads((stale / SCHEMA_FILE).read_text())
    saved["features"] = {}
    (stale / SCHEMA_FILE).write_text(json.dumps(saved))
    refused = judged(stale)
    assert not refused["passed"]
    (failed,) = [c for c in refused["checks"] if c["rule"] == "serving_starts_and_answers"]
    assert not failed["passed"] and "features differ" in refused["infra"]["error"]

    with pytest.raises(ShopguideError, match="run `shopguide dataset features` first"):
        judged(tmp_path / "nowhere")
    assert not (tmp_path / "registry").exists()


def test_a_champion_promoted_while_serving_is_swapped_in(served: Served, tmp_path: Path) -> None:
    """`dataset serve --registry` follows the champion without a restart; a champion this repo
    cannot serve (another schema version) is not swapped in, the current one keeps serving."""
    registry = tmp_path / "registry"
    register(registry, served.model_dir, {"note": "first"})
    stale = Path(shutil.copytree(served.model_dir, tmp_path / "stale"))
    saved = json.loads((stale / SCHEMA_FILE).read_text())
    saved["features"] = {}
    (stale / SCHEMA_FILE).write_text(json.dumps(saved))
    serving = served.params.serving.model_copy(update={"reload_interval_s": 0.2})
    params = served.params.model_copy(update={"serving": serving})
    body = {"inputs": v2_inputs(served.schema, served.request.iloc[:2])}

    def served_version(client: httpx.Client, wanted: str) -> str:
        deadline = time.monotonic() + 30
        while True:
            reply = client.post("/v2/models/olist/infer", json=body)
            assert reply.status_code == 200, reply.text
            version = reply.json()["model_version"]
            if version == wanted or time.monotonic() > deadline:
                return version
            time.sleep(0.2)

    with (
        running_server(params, served.repo, registry=registry, declared=True) as (url, _, log),
        httpx.Client(base_url=url, timeout=30) as client,
    ):
        assert served_version(client, "v0001") == "v0001"
        register(registry, served.model_dir, {"note": "promoted while serving"})
        assert served_version(client, "v0002") == "v0002"
        register(registry, stale, {"note": "another schema version"})
        deadline = time.monotonic() + 30
        while "cannot serve champion v0003" not in log.read_text():
            assert time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.2)
        assert served_version(client, "v0002") == "v0002"


def _offline(served: Served, model: MultiTaskModel) -> dict[str, np.ndarray]:
    frame = OnlineFeatures(served.repo, served.schema).served_frame(served.request)
    return predictions(model, frame, served.schema)


def test_the_server_scores_rows_as_the_model_does_offline_and_names_bad_fields(
    served: Served,
) -> None:
    expected = _offline(served, load_model(served.model_dir))
    inputs = v2_inputs(served.schema, served.request)
    with (
        running_server(served.params, served.repo, model_dir=served.model_dir, declared=True) as (
            url,
            process,
            _,
        ),
        httpx.Client(base_url=url, timeout=30) as client,
    ):
        reply = client.post("/v2/models/olist/infer", json={"inputs": inputs})
        assert reply.status_code == 200, reply.text
        outputs = {o["name"]: o for o in reply.json()["outputs"]}
        assert set(outputs) == set(served.schema.tasks)
        for task, values in expected.items():
            assert outputs[task]["shape"] == [ROWS]
            np.testing.assert_allclose(outputs[task]["data"], values, rtol=0, atol=1e-5)
        assert 0.0 < min(outputs["bad_review"]["data"]) <= max(outputs["bad_review"]["data"]) < 1
        v1 = client.post(
            "/v1/models/olist:predict",
            json={"instances": [{i["name"]: i["data"][r] for i in inputs} for r in range(3)]},
        )
        assert v1.status_code == 200, v1.text
        first = v1.json()["predictions"][0]
        assert first["review_score"] == pytest.approx(expected["review_score"][0], abs=1e-5)

        def changed(name: str, **tensor: object) -> list[dict]:
            return [({**i, **tensor} if i["name"] == name else i) for i in inputs]

        bad = {
            "orders.customer_id": [i for i in inputs if i["name"] != "orders.customer_id"],
            "order_items.price": changed("order_items.price", datatype="BYTES"),
            "orders.order_purchase_timestamp": changed(
                "orders.order_purchase_timestamp", datatype="BYTES", data=["soon"] * ROWS
            ),
            "order_items.freight_value": changed(
                "order_items.freight_value", shape=[ROWS - 1], data=[1.0] * (ROWS - 1)
            ),
            "orders.discount": [*inputs, {**inputs[0], "name": "orders.discount"}],
            "payments.payment_type": changed("payments.payment_type", data=[{"a": 1}] * ROWS),
        }
        for field, body in bad.items():
            reply = client.post("/v2/models/olist/infer", json={"inputs": body})
            assert reply.status_code == 400, (field, reply.text)
            assert field in reply.json()["error"], (field, reply.text)
        missing = client.post("/v1/models/olist:predict", json={"instances": [{"a": 1}]})
        assert missing.status_code == 400 and "instances.0" in missing.json()["error"]
        assert client.get("/v2/health/ready").status_code == 200
        assert process.poll() is None


def test_the_readme_walkthrough_runs_as_written(tmp_path: Path) -> None:
    """README "Your own data": its schema, params and commands on the shops' files, through
    gate, promotion and the generated Feast repo; its request to the served champion; then a
    gate that refuses (floors out of reach) leaves the champion as it was."""
    (tmp_path / "shops.yaml").write_text(readme_block("walkthrough-schema"))
    # As conftest.write_params: a loaded test machine must not refuse on the serving latency;
    # fewer served requests (the check's mechanism is tested, not its statistics).
    infra = "gate: {infra: {p99_latency_ms: 5000, requests: 5, candidates: 20}}\n"
    (tmp_path / "shops.params.yaml").write_text(readme_block("walkthrough-params") + infra)
    write_shop_files(tmp_path / "data/shops")
    bin_dir = Path(sys.executable).parent
    done = subprocess.run(
        ["bash", "-c", readme_block("walkthrough-commands")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env={"PATH": f"{bin_dir}:/usr/bin:/bin", "COLUMNS": "200"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics/dataset_train.json").read_text())
    assert metrics["dataset"] == "shops"
    assert metrics["test"]["good"]["auc"] > 0.7  # the shop and the note tell good from bad
    assert (tmp_path / "reports/datasets/shops_orders.json").is_file()
    registry = tmp_path / "registry/datasets"
    current = champion(registry)
    assert current is not None and current.name == "v0001"
    card = (current.path / "MODEL_CARD.md").read_text()
    assert "## Gate" in card and "good: auc" in card and "| stars | regression |" in card
    # The gate served the candidate from the generated repo and got the offline scores back.
    decision = json.loads((tmp_path / "artifacts/datasets/gate_decision.json").read_text())
    served = {c["rule"]: c for c in decision["checks"] if c["rule"].startswith("serving")}
    assert set(served) == {"serving_parity", "serving_p99_latency"}
    assert served["serving_parity"]["passed"] and served["serving_parity"]["value"] <= 1e-5
    assert decision["infra"]["requests"] >= 1 and decision["infra"]["startup_s"] > 0

    serve = readme_block("walkthrough-serve")
    body = json.loads(serve.split("-d '", 1)[1].split("'", 1)[0])
    params = load_params(tmp_path / "shops.params.yaml")
    repo = tmp_path / "artifacts/datasets/feature_repo"
    with running_server(params, repo, registry=registry, declared=True) as (url, _, _):
        reply = httpx.post(f"{url}/v1/models/shops:predict", content=json.dumps(body), timeout=30)
    assert reply.status_code == 200, reply.text
    assert reply.json()["model_version"] == "v0001"
    (row,) = reply.json()["predictions"]
    assert set(row) == {"rated", "good", "stars"} and 1 <= row["stars"] <= 5.5
    assert row["good"] > 0.5  # shop s2 (of the good shops) and a happy note

    write_yaml(
        tmp_path / "strict.yaml",
        yaml.safe_load(readme_block("walkthrough-params"))
        | {"gate": {"declared_auc_floor": {"rated": 0.99}, "infra": {"enabled": False}}},
    )
    refused = dataset_cli(tmp_path, "gate", "--params", "strict.yaml")
    assert refused.returncode == 3, refused.stderr[-2000:]
    assert "rated: auc" in refused.stderr and "does not beat 0.9900" in refused.stderr
    decision = json.loads((tmp_path / "artifacts/datasets/gate_decision.json").read_text())
    assert decision["champion"] == "v0001"  # the same model again: no regression against it
    against = [c for c in decision["checks"] if c["rule"] == "no_regression_vs_champion"]
    assert len(against) == 3 and all(c["passed"] and c["p_worse"] == 0 for c in against)
    assert "serving check (gate.infra.enabled is false)" in decision["not_checked"]
    again = dataset_cli(tmp_path, "promote")
    assert again.returncode == 3 and "champion unchanged" in again.stderr
    assert [v.name for v in versions(registry)] == ["v0001"]
    assert champion(registry).name == "v0001"
