"""Promotion creates or patches the InferenceService through the Kubernetes API.

The KServe client talks real HTTP to a recording server on 127.0.0.1 (tests/fake_api.py) that
answers like the API server; the tests assert the exact requests up to the cluster.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import kubernetes.client
import kubernetes.config.kube_config
import pytest
import yaml
from kserve import KServeClient

from components.promote import deploy_champion, promote
from shopguide.config import Params
from shopguide.deploy import apply_inference_service, inference_service, inference_service_model
from shopguide.errors import ShopguideError
from shopguide.registry import champion, model_fingerprint
from tests.conftest import PipelineRun
from tests.fake_api import Request, fake_api
from tests.test_kfp_pipeline import _artifact

ISVC_PATH = "/apis/serving.kserve.io/v1beta1/namespaces/shopguide/inferenceservices"


class Cluster:
    """The API server's InferenceService endpoints, holding at most the one object."""

    def __init__(self, exists: bool = False, fail_get: int | None = None) -> None:
        self.stored: dict | None = {"metadata": {"name": "shopguide"}} if exists else None
        self.fail_get = fail_get

    def __call__(self, request: Request) -> tuple[int, object]:
        if request.method == "GET":
            if self.fail_get:
                return self.fail_get, {"kind": "Status", "code": self.fail_get}
            if self.stored is None:
                return 404, {"kind": "Status", "reason": "NotFound", "code": 404}
            return 200, self.stored
        self.stored = request.json()
        return (201 if request.method == "POST" else 200), self.stored


def kubeconfig(url: str) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "test", "cluster": {"server": url}}],
        "users": [{"name": "test", "user": {"token": "test-token"}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}],
        "current-context": "test",
    }


@pytest.fixture(autouse=True)
def _restore_kubernetes_config() -> Iterator[None]:
    """KServeClient loads its kubeconfig into the process-wide default configuration."""
    saved = kubernetes.client.Configuration.get_default_copy()
    yield
    kubernetes.client.Configuration.set_default(saved)


@pytest.mark.parametrize(
    ("exists", "action", "method", "path"),
    [
        (False, "created", "POST", ISVC_PATH),
        (True, "patched", "PATCH", f"{ISVC_PATH}/shopguide"),
    ],
)
def test_apply_creates_or_patches(exists: bool, action: str, method: str, path: str) -> None:
    params = Params()
    isvc = inference_service_model("v0007", params.deploy, params.serving)
    cluster = Cluster(exists=exists)
    with fake_api(cluster) as api:
        client = KServeClient(config_dict=kubeconfig(api.url))
        assert apply_inference_service(isvc, client) == action
    get, write = api.requests
    assert (get.method, get.path) == ("GET", f"{ISVC_PATH}/shopguide")
    assert (write.method, write.path) == (method, path)
    assert write.headers["authorization"] == "Bearer test-token"
    if method == "PATCH":
        assert write.headers["content-type"] == "application/merge-patch+json"
    assert write.json() == inference_service("v0007", params.deploy, params.serving)
    env = write.json()["spec"]["predictor"]["containers"][0]["env"]
    assert {"name": "STORAGE_URI", "value": "pvc://shopguide-data/registry/versions/v0007"} in env


def test_apply_reports_an_api_error_without_writing() -> None:
    params = Params()
    isvc = inference_service_model("v0007", params.deploy, params.serving)
    with fake_api(Cluster(fail_get=403)) as api:
        client = KServeClient(config_dict=kubeconfig(api.url))
        with pytest.raises(ShopguideError, match=r"shopguide/shopguide: cluster answered 403"):
            apply_inference_service(isvc, client)
    assert [r.method for r in api.requests] == ["GET"]


def test_canary_percent_goes_into_the_patch() -> None:
    params = Params()
    deploy = params.deploy.model_copy(update={"canary_traffic_percent": 10})
    with fake_api(Cluster(exists=True)) as api:
        client = KServeClient(config_dict=kubeconfig(api.url))
        apply_inference_service(inference_service_model("v0008", deploy, params.serving), client)
    assert api.requests[-1].json()["spec"]["predictor"]["canaryTrafficPercent"] == 10


def test_promoted_champion_is_deployed(
    pipeline_run: PipelineRun, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = tmp_path / "registry"
    # A passing decision of our own: what is tested is promotion and deployment, not the gate.
    decision = tmp_path / "decision.json"
    decision.write_text(
        json.dumps(
            {
                "passed": True,
                "reasons": [],
                "checks": [],
                "champion": None,
                "candidate_fingerprint": model_fingerprint(pipeline_run.candidate),
                "registry": str(registry),
            }
        )
    )
    promotion = _artifact(tmp_path / "promotion.json")
    outcome = promote.python_func(
        model=_artifact(pipeline_run.candidate),
        pretrained=_artifact(pipeline_run.pretrained),
        decision=_artifact(decision),
        evaluation=_artifact(pipeline_run.evaluation),
        training_set=_artifact(pipeline_run.training_set),
        raw_path=str(pipeline_run.params.data.raw_path),
        registry=str(registry),
        params_json=pipeline_run.params.model_dump_json(),
        promotion=promotion,
        inference_service=_artifact(tmp_path / "isvc.yaml"),
    )
    version = champion(registry)
    assert outcome == f"promoted {version.name}"
    cluster = Cluster()
    with fake_api(cluster) as api:
        config = tmp_path / "kubeconfig"
        config.write_text(yaml.safe_dump(kubeconfig(api.url)))
        # What KServeClient() reads outside a pod: the kubeconfig default, taken from KUBECONFIG
        # when kubernetes was imported.
        monkeypatch.setattr(
            kubernetes.config.kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(config)
        )
        deployed = deploy_champion.python_func(
            promotion=promotion, params_json=pipeline_run.params.model_dump_json()
        )
    assert deployed == "created shopguide/shopguide"
    assert [(r.method, r.path) for r in api.requests] == [
        ("GET", f"{ISVC_PATH}/shopguide"),
        ("POST", ISVC_PATH),
    ]
    assert cluster.stored["metadata"]["labels"]["shopguide/model-version"] == version.name
    assert cluster.stored == yaml.safe_load((tmp_path / "isvc.yaml").read_text())
