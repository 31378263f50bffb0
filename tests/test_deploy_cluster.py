"""Promotion creates or patches the InferenceService through the Kubernetes API.

The KServe client talks real HTTP to a recording server on 127.0.0.1 (tests/fake_api.py) that
answers like the API server; the tests assert the exact requests up to the cluster.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
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
from shopguide.model.mmoe import MMoE, MMoEConfig
from shopguide.model.store import save_model
from shopguide.registry import champion, model_fingerprint, register
from tests.conftest import PipelineRun
from tests.fake_api import Request, fake_api, merge_patch
from tests.test_k8s_manifests import build
from tests.test_kfp_pipeline import _artifact
from tests.test_routed import CONFIG_FIELDS

ISVC_PATH = "/apis/serving.kserve.io/v1beta1/namespaces/shopguide/inferenceservices"


class Cluster:
    """The API server's InferenceService endpoints, holding at most the one object: POST stores
    the body, PATCH merge-patches the stored object (RFC 7386, as for a custom resource)."""

    def __init__(
        self, exists: bool = False, stored: dict | None = None, fail_get: int | None = None
    ) -> None:
        if exists and stored is None:
            stored = {"metadata": {"name": "shopguide"}}
        self.stored = stored
        self.fail_get = fail_get

    def __call__(self, request: Request) -> tuple[int, object]:
        if request.method == "GET":
            if self.fail_get:
                return self.fail_get, {"kind": "Status", "code": self.fail_get}
            if self.stored is None:
                return 404, {"kind": "Status", "reason": "NotFound", "code": 404}
            return 200, self.stored
        if request.method == "PATCH":
            self.stored = merge_patch(self.stored, request.json())
            return 200, self.stored
        self.stored = request.json()
        return 201, self.stored


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
    rendered = inference_service("v0007", params.deploy, params.serving)
    if method == "PATCH":
        assert write.headers["content-type"] == "application/merge-patch+json"
        # Only what the version changes: its label and the containers (a list goes whole).
        assert write.json() == {
            "apiVersion": "serving.kserve.io/v1beta1",
            "kind": "InferenceService",
            "metadata": {"labels": {"shopguide/model-version": "v0007"}},
            "spec": {"predictor": {"containers": rendered["spec"]["predictor"]["containers"]}},
        }
    else:
        assert write.json() == rendered
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


def test_promotion_keeps_the_clusters_replicas_and_canary() -> None:
    """Prod's predictor (k8s/overlays/prod/serving) has 2-6 replicas and a 10% canary;
    promoting a version with `deploy`'s defaults (1-3 replicas, no canary) moves the version
    and leaves those alone."""
    (live,) = build("prod/serving")
    before = copy.deepcopy(live)
    params = Params()
    assert (params.deploy.min_replicas, params.deploy.max_replicas) == (1, 3)
    assert params.deploy.canary_traffic_percent is None
    cluster = Cluster(stored=live)
    with fake_api(cluster) as api:
        client = KServeClient(config_dict=kubeconfig(api.url))
        isvc = inference_service_model("v0007", params.deploy, params.serving)
        assert apply_inference_service(isvc, client) == "patched"
    patch = api.requests[-1].json()
    for field in ("minReplicas", "maxReplicas", "canaryTrafficPercent"):
        assert field not in patch["spec"]["predictor"]
    after = cluster.stored
    predictor = after["spec"]["predictor"]
    assert (predictor["minReplicas"], predictor["maxReplicas"]) == (2, 6)
    assert predictor["canaryTrafficPercent"] == 10
    assert after["metadata"]["labels"] == {
        **before["metadata"]["labels"],
        "shopguide/model-version": "v0007",
    }
    (container,) = predictor["containers"]
    assert {"name": "STORAGE_URI", "value": "pvc://shopguide-data/registry/versions/v0007"} in (
        container["env"]
    )
    # Nothing else moved: the container is the one there was, with the new version's URI.
    (old,) = before["spec"]["predictor"]["containers"]
    uri = next(e for e in old["env"] if e["name"] == "STORAGE_URI")
    uri["value"] = uri["value"].replace("v0001", "v0007")
    before["metadata"]["labels"]["shopguide/model-version"] = "v0007"
    assert after == before


def test_canary_percent_goes_into_the_patch() -> None:
    """With `deploy.canary_traffic_percent` set, each promotion sends it with the new version,
    which is what starts a KServe canary."""
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

    # In a pod, the step deploys into the namespace its run runs in (a dev run into
    # shopguide-dev), whatever deploy.namespace the compiled-in params name.
    namespace_file = tmp_path / "namespace"
    namespace_file.write_text("shopguide-dev")
    monkeypatch.setattr("shopguide.deploy.POD_NAMESPACE_FILE", namespace_file)
    with fake_api(Cluster()) as api:
        config.write_text(yaml.safe_dump(kubeconfig(api.url)))
        deployed = deploy_champion.python_func(
            promotion=promotion, params_json=pipeline_run.params.model_dump_json()
        )
    assert deployed == "created shopguide-dev/shopguide"
    dev_path = ISVC_PATH.replace("/shopguide/", "/shopguide-dev/")
    assert [(r.method, r.path) for r in api.requests] == [
        ("GET", f"{dev_path}/shopguide"),
        ("POST", dev_path),
    ]
    assert api.requests[-1].json()["metadata"]["namespace"] == "shopguide-dev"


def _rollback(params: Path, kubeconfig_path: Path, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "shopguide.cli", "models", "rollback", "--deploy", *args]
    return subprocess.run(
        [*command, "--params", str(params)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "KUBECONFIG": str(kubeconfig_path)},
    )


def test_rollback_with_deploy_moves_the_cluster_back(tmp_path: Path) -> None:
    """`shopguide models rollback --deploy` patches the running InferenceService to the version
    it restored; without a cluster to talk to it says so, after the registry rollback."""
    model = tmp_path / "model"
    save_model(MMoE(MMoEConfig(**CONFIG_FIELDS)), model)
    root = tmp_path / "registry"
    register(root, model, {})
    register(root, model, {})
    params = tmp_path / "params.yaml"
    params.write_text(
        f"registry:\n  path: {root}\n"
        f"deploy:\n  output: {tmp_path / 'isvc.yaml'}\n  canary_traffic_percent: 10\n"
    )
    stored = inference_service("v0002", Params().deploy, Params().serving)
    stored["spec"]["predictor"]["canaryTrafficPercent"] = 10  # v0002 was rolled out as a canary
    cluster = Cluster(stored=copy.deepcopy(stored))
    with fake_api(cluster) as api:
        config = tmp_path / "kubeconfig"
        config.write_text(yaml.safe_dump(kubeconfig(api.url)))
        done = _rollback(params, config)
    assert done.returncode == 0, done.stderr
    assert "champion: v0002 -> v0001" in done.stdout
    assert "patched shopguide/shopguide" in done.stdout
    assert cluster.stored["metadata"]["labels"]["shopguide/model-version"] == "v0001"
    # a rollback takes all the traffic at once, whatever canary share promotions get
    assert cluster.stored["spec"]["predictor"]["canaryTrafficPercent"] == 100
    env = cluster.stored["spec"]["predictor"]["containers"][0]["env"]
    assert {"name": "STORAGE_URI", "value": "pvc://shopguide-data/registry/versions/v0001"} in env

    lost = _rollback(params, tmp_path / "missing", "--to", "v0002")
    assert lost.returncode == 2 and "no Kubernetes cluster to deploy v0002 to" in lost.stderr
    assert "Traceback" not in lost.stderr
    assert champion(root).name == "v0002"
