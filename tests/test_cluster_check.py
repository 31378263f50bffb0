"""`shopguide cluster check` against a recording Kubernetes API server on 127.0.0.1.

The kubernetes client reads a kubeconfig that points at tests/fake_api.py, which answers like
the API server from a table of objects (some built from the shipped manifests); the tests
assert what the command reports missing, and that it only reads.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from typer.testing import CliRunner

from shopguide.cli import app
from shopguide.cluster import KNATIVE_FEATURES, REQUIRED_CRDS, SERVERLESS_CRDS
from tests.fake_api import Request, fake_api, merge_patch
from tests.test_deploy_cluster import kubeconfig
from tests.test_k8s_manifests import build

ROOT = Path(__file__).resolve().parents[1]
FEATURES_PATCH = ROOT / "k8s" / "cluster" / "knative-config-features.yaml"
NS = "shopguide"


def crd(name: str) -> dict:
    plural, group = name.split(".", 1)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": name},
        "spec": {
            "group": group,
            "names": {"kind": plural.title(), "plural": plural},
            "scope": "Namespaced",
            "versions": [{"name": "v1", "served": True, "storage": True}],
        },
    }


def config_map(name: str, namespace: str, data: dict[str, str]) -> dict:
    return {"kind": "ConfigMap", "metadata": {"name": name, "namespace": namespace}, "data": data}


def node(name: str, gpus: int, labels: dict[str, str]) -> dict:
    return {
        "metadata": {"name": name, "labels": labels},
        "status": {"allocatable": {"cpu": "32", "nvidia.com/gpu": str(gpus)}},
    }


def complete_cluster() -> dict[str, object]:
    """Path -> object of a cluster that has everything, the overlay applied."""
    objects: dict[str, object] = {
        f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}": crd(name)
        for name in {**REQUIRED_CRDS, **SERVERLESS_CRDS}
    }
    objects["/api/v1/namespaces/kserve/configmaps/inferenceservice-config"] = config_map(
        "inferenceservice-config", "kserve", {"deploy": '{"defaultDeploymentMode": "Serverless"}'}
    )
    # Knative's shipped default (flags off), with k8s/cluster's patch applied as `kubectl patch
    # --type merge --patch-file` would.
    default = config_map("config-features", "knative-serving", {"multi-container": "enabled"})
    objects["/api/v1/namespaces/knative-serving/configmaps/config-features"] = merge_patch(
        default, yaml.safe_load(FEATURES_PATCH.read_text())
    )
    objects[f"/apis/kubeflow.org/v1/profiles/{NS}"] = {
        "apiVersion": "kubeflow.org/v1",
        "kind": "Profile",
        "metadata": {"name": NS},
    }
    for role in ("kubeflow-edit", "kubeflow-pipelines-edit"):
        objects[f"/apis/rbac.authorization.k8s.io/v1/clusterroles/{role}"] = {
            "metadata": {"name": role},
            "rules": [],
        }
    for doc in build("prod"):
        kind, name = doc["kind"], doc["metadata"]["name"]
        if kind == "ConfigMap":
            objects[f"/api/v1/namespaces/{NS}/configmaps/{name}"] = doc
        if kind == "PersistentVolumeClaim" and name == "shopguide-data":
            bound = {**doc, "spec": {**doc["spec"], "storageClassName": "cephfs"}}
            objects[f"/api/v1/namespaces/{NS}/persistentvolumeclaims/{name}"] = {
                **bound,
                "status": {"phase": "Bound"},
            }
    objects["/api/v1/nodes"] = {
        "items": [node("gpu-1", 4, {"nvidia.com/gpu.present": "true"})],
    }
    objects["/apis/storage.k8s.io/v1/storageclasses"] = {"items": []}
    return objects


class Cluster:
    """Answers GETs from `objects` (404 for the rest); `forbidden` paths answer 403."""

    def __init__(self, objects: dict[str, object], forbidden: tuple[str, ...] = ()) -> None:
        self.objects = objects
        self.forbidden = forbidden

    def __call__(self, r: Request) -> tuple[int, object]:
        if r.method != "GET":
            return 405, {"kind": "Status", "code": 405}
        if r.path.startswith(self.forbidden):
            return 403, {"kind": "Status", "reason": "Forbidden", "code": 403}
        if r.path in self.objects:
            return 200, self.objects[r.path]
        if r.path in ("/api/v1/nodes", "/apis/storage.k8s.io/v1/storageclasses"):
            return 200, {"items": []}
        return 404, {"kind": "Status", "reason": "NotFound", "code": 404}


def check(cluster: Cluster, tmp_path: Path, *args: str) -> tuple[int, list[Request], str]:
    with fake_api(cluster) as api:
        config = tmp_path / "kubeconfig"
        config.write_text(yaml.safe_dump(kubeconfig(api.url)))
        result = CliRunner().invoke(
            app,
            ["cluster", "check", "--kubeconfig", str(config), *args],
            env={"COLUMNS": "200"},
        )
    return result.exit_code, api.requests, result.output


def statuses(output: str) -> dict[str, str]:
    """check name -> status, from the report's lines."""
    found = {}
    for line in output.splitlines():
        status, _, rest = line.partition(" ")
        if status in {"ok", "missing", "warn", "unknown"}:
            found[rest.strip().split(":")[0]] = status
    return found


def test_a_complete_cluster_passes_and_is_only_read(tmp_path: Path) -> None:
    code, requests, output = check(Cluster(complete_cluster()), tmp_path)
    assert code == 0, output
    found = statuses(output)
    assert set(found.values()) == {"ok"}, output
    for name in REQUIRED_CRDS:
        assert found[f"crd {name}"] == "ok"
    for name in ("knative config-features", "profile", "storage", "gpu nodes", "overlay"):
        assert found[name] == "ok"
    assert "nothing missing for namespace shopguide" in output
    assert {r.method for r in requests} == {"GET"}
    assert {r.headers["authorization"] for r in requests} == {"Bearer test-token"}
    # GPU nodes are looked up by the selector the pipeline's GPU steps use.
    (nodes,) = [r for r in requests if r.path == "/api/v1/nodes"]
    assert nodes.query["labelSelector"] == ["nvidia.com/gpu.present=true"]


def test_an_empty_cluster_reports_everything_missing(tmp_path: Path) -> None:
    code, _, output = check(Cluster({}), tmp_path)
    assert code == 2
    found = statuses(output)
    for name in REQUIRED_CRDS:
        assert found[f"crd {name}"] == "missing"
    for name in ("kserve deployment mode", "profile", "storage", "gpu nodes"):
        assert found[name] == "missing", name
    assert found["overlay"] == "warn"  # this project's step 2, not a cluster prerequisite
    assert found["clusterrole kubeflow-edit"] == "missing"
    assert "the cluster lacks" in output
    assert "Traceback" not in output


def test_knative_without_the_pvc_flag_is_missing_until_the_shipped_patch(tmp_path: Path) -> None:
    """The shipped patch is exactly what the check wants; without it the predictor's PVC is
    refused in Serverless mode."""
    assert yaml.safe_load(FEATURES_PATCH.read_text()) == {"data": KNATIVE_FEATURES}
    objects = complete_cluster()
    path = "/api/v1/namespaces/knative-serving/configmaps/config-features"
    objects[path] = config_map("config-features", "knative-serving", {})
    code, _, output = check(Cluster(objects), tmp_path)
    assert code == 2
    assert statuses(output)["knative config-features"] == "missing"
    assert "k8s/cluster/knative-config-features.yaml" in output
    objects[path] = merge_patch(objects[path], yaml.safe_load(FEATURES_PATCH.read_text()))
    code, _, output = check(Cluster(objects), tmp_path)
    assert code == 0, output


def test_raw_deployment_needs_no_flag_but_loses_the_canary(tmp_path: Path) -> None:
    objects = complete_cluster()
    objects["/api/v1/namespaces/kserve/configmaps/inferenceservice-config"] = config_map(
        "inferenceservice-config",
        "kserve",
        {"deploy": json.dumps({"defaultDeploymentMode": "RawDeployment"})},
    )
    del objects["/api/v1/namespaces/knative-serving/configmaps/config-features"]
    for name in SERVERLESS_CRDS:
        del objects[f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}"]
    params = tmp_path / "params.yaml"
    params.write_text("deploy:\n  canary_traffic_percent: 10\n")
    code, _, output = check(Cluster(objects), tmp_path, "--params", str(params))
    assert code == 0, output
    found = statuses(output)
    assert found["knative config-features"] == "ok"
    assert found["canary traffic"] == "warn"


def test_what_the_account_may_not_read_is_unknown_not_missing(tmp_path: Path) -> None:
    """A profile user typically may not read nodes, CRDs or cluster roles."""
    forbidden = (
        "/api/v1/nodes",
        "/apis/apiextensions.k8s.io",
        "/apis/rbac.authorization.k8s.io",
    )
    code, _, output = check(Cluster(complete_cluster(), forbidden), tmp_path)
    assert code == 0, output
    found = statuses(output)
    assert found["gpu nodes"] == "unknown"
    assert found["crd inferenceservices.serving.kserve.io"] == "unknown"
    assert found["clusterrole kubeflow-edit"] == "unknown"
    assert found["profile"] == "ok"


def test_too_few_gpus_on_a_node_and_another_namespace(tmp_path: Path) -> None:
    objects = complete_cluster()
    objects["/api/v1/nodes"] = {"items": [node("gpu-1", 1, {"nvidia.com/gpu.present": "true"})]}
    params = tmp_path / "params.yaml"
    params.write_text("kubeflow:\n  train_accelerator_limit: 4\n")
    code, requests, output = check(
        Cluster(objects), tmp_path, "--params", str(params), "--namespace", "shopguide-dev"
    )
    assert code == 2
    found = statuses(output)
    assert found["gpu nodes"] == "missing"
    assert "need 4 on one node" in " ".join(output.split())
    # The namespace's own objects are looked up there: the dev profile and overlay are absent.
    assert found["profile"] == "missing" and found["overlay"] == "warn"
    assert any(r.path == "/apis/kubeflow.org/v1/profiles/shopguide-dev" for r in requests)


def test_no_kubeconfig_is_a_clean_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["cluster", "check", "--kubeconfig", str(tmp_path / "missing")]
    )
    assert result.exit_code == 2
    assert "no cluster to check" in result.output
