"""`shopguide cluster check`: read the live cluster through the kubeconfig and report what the
cluster path (README "Run on Kubeflow") needs and does not find.

Every check is a read (GET or LIST) and says one of: `ok`, `missing` (a prerequisite to install
or configure; the command then fails), `warn` (works with a caveat, or this project's overlay
not applied yet) or `unknown` (the account may not read it: a profile user often cannot list
nodes or CRDs; ask an administrator). Nothing is written to the cluster.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from shopguide.config import Params
from shopguide.errors import ShopguideError

log = logging.getLogger(__name__)
Status = Literal["ok", "missing", "warn", "unknown"]

# The custom resources the cluster path uses, and what installs them.
REQUIRED_CRDS = {
    "inferenceservices.serving.kserve.io": "KServe (the predictor)",
    "workflows.argoproj.io": "Argo Workflows (KFP v2 runs its pipelines on it)",
    "scheduledworkflows.kubeflow.org": "Kubeflow Pipelines (recurring runs)",
    "profiles.kubeflow.org": "Kubeflow profiles (multi-user namespaces)",
}
SERVERLESS_CRDS = {"services.serving.knative.dev": "Knative Serving (KServe's Serverless mode)"}
# Knative refuses a Service (so KServe an InferenceService) that mounts a PersistentVolumeClaim
# unless this flag is on; the predictor mounts shopguide-data read-only, so the write flag
# (kubernetes.podspec-persistent-volume-write) is not needed. Shipped as a patch in
# k8s/cluster/knative-config-features.yaml (a test keeps the two equal).
KNATIVE_FEATURES = {"kubernetes.podspec-persistent-volume-claim": "enabled"}
KNATIVE_NAMESPACE = "knative-serving"
KSERVE_CONFIG = "inferenceservice-config"
KSERVE_NAMESPACES = ("kserve", "kubeflow")  # standalone KServe; KServe inside Kubeflow
# The ClusterRoles the overlay and the CronJob bind in the namespace (k8s/base/rbac.yaml,
# k8s/jobs/schedule/scheduler.yaml); Kubeflow installs them.
CLUSTER_ROLES = ("kubeflow-edit", "kubeflow-pipelines-edit")
DEFAULT_CLASS = "storageclass.kubernetes.io/is-default-class"


@dataclass(frozen=True)
class Finding:
    check: str
    status: Status
    detail: str

    def line(self) -> str:
        return f"{self.status:8} {self.check}: {self.detail}"


class _Reader:
    """GETs through the client that turn 404 into None and 401/403 into `Forbidden`."""

    def __init__(self, api: k8s.ApiClient) -> None:
        self.core = k8s.CoreV1Api(api)
        self.crds = k8s.ApiextensionsV1Api(api)
        self.custom = k8s.CustomObjectsApi(api)
        self.storage = k8s.StorageV1Api(api)
        self.rbac = k8s.RbacAuthorizationV1Api(api)

    def get(self, func: Callable, *args, **kwargs):
        try:
            return func(*args, **kwargs)
        except ApiException as exc:
            if exc.status == 404:
                return None
            if exc.status in (401, 403):
                raise Forbidden(f"{exc.status} {exc.reason}") from exc
            raise ShopguideError(f"cluster answered {exc.status} {exc.reason}") from exc
        except (HTTPError, OSError) as exc:
            raise ShopguideError(f"cluster unreachable: {exc}") from exc


class Forbidden(Exception):
    pass


def _guarded(check: str, func: Callable[[], list[Finding]]) -> list[Finding]:
    try:
        return func()
    except Forbidden as exc:
        return [Finding(check, "unknown", f"not readable with this account ({exc})")]


def _crds(r: _Reader, serverless: bool) -> list[Finding]:
    wanted = {**REQUIRED_CRDS, **(SERVERLESS_CRDS if serverless else {})}
    findings = []
    for name, what in wanted.items():

        def one(name: str = name, what: str = what) -> list[Finding]:
            found = r.get(r.crds.read_custom_resource_definition, name)
            status: Status = "ok" if found is not None else "missing"
            return [Finding(f"crd {name}", status, what + ("" if found else ": not installed"))]

        findings += _guarded(f"crd {name}", one)
    return findings


def _kserve_mode(r: _Reader) -> tuple[str | None, list[Finding]]:
    """KServe's default deployment mode from its inferenceservice-config ConfigMap."""
    unreadable = []
    for namespace in KSERVE_NAMESPACES:
        try:
            config = r.get(r.core.read_namespaced_config_map, KSERVE_CONFIG, namespace)
        except Forbidden as exc:
            unreadable.append(f"{namespace}: {exc}")
            continue
        if config is None:
            continue
        deploy = json.loads((config.data or {}).get("deploy") or "{}")
        mode = deploy.get("defaultDeploymentMode", "Serverless")
        return mode, [
            Finding("kserve deployment mode", "ok", f"{mode} ({namespace}/{KSERVE_CONFIG})")
        ]
    if unreadable:
        return None, [Finding("kserve deployment mode", "unknown", "; ".join(unreadable))]
    return None, [
        Finding(
            "kserve deployment mode",
            "missing",
            f"no ConfigMap {KSERVE_CONFIG} in {' or '.join(KSERVE_NAMESPACES)}: "
            "is KServe installed?",
        )
    ]


def _knative_features(r: _Reader, mode: str | None, canary: bool) -> list[Finding]:
    if mode == "RawDeployment":
        findings = [
            Finding(
                "knative config-features",
                "ok",
                "not used: KServe runs RawDeployment (plain Deployments accept the PVC)",
            )
        ]
        if canary:
            findings.append(
                Finding(
                    "canary traffic",
                    "warn",
                    "RawDeployment ignores canaryTrafficPercent: a promotion takes all traffic",
                )
            )
        return findings

    def read() -> list[Finding]:
        config = r.get(r.core.read_namespaced_config_map, "config-features", KNATIVE_NAMESPACE)
        if config is None:
            return [Finding("knative config-features", "missing", "Knative Serving not installed")]
        data = config.data or {}
        wrong = {k: data.get(k) for k, v in KNATIVE_FEATURES.items() if data.get(k) != v}
        if wrong:
            return [
                Finding(
                    "knative config-features",
                    "missing",
                    f"{wrong} (needs {KNATIVE_FEATURES}: the predictor mounts a PVC; apply "
                    "k8s/cluster/knative-config-features.yaml)",
                )
            ]
        return [Finding("knative config-features", "ok", str(KNATIVE_FEATURES))]

    return _guarded("knative config-features", read)


def _profile(r: _Reader, namespace: str) -> list[Finding]:
    def read() -> list[Finding]:
        profile = r.get(
            r.custom.get_cluster_custom_object, "kubeflow.org", "v1", "profiles", namespace
        )
        if profile is None:
            return [
                Finding(
                    "profile",
                    "missing",
                    f"no Kubeflow Profile {namespace!r}: create it first (the overlay only names "
                    "the namespace)",
                )
            ]
        return [Finding("profile", "ok", f"Profile {namespace} exists")]

    findings = _guarded("profile", read)
    if findings[0].status != "unknown":
        return findings

    def by_label() -> list[Finding]:
        ns = r.get(r.core.read_namespace, namespace)
        labels = (ns.metadata.labels or {}) if ns is not None else {}
        if labels.get("app.kubernetes.io/part-of") == "kubeflow-profile":
            return [Finding("profile", "ok", f"namespace {namespace} is a profile's")]
        return [Finding("profile", "missing", f"namespace {namespace} is not a Kubeflow profile's")]

    return _guarded("profile", by_label)


def _storage(r: _Reader, namespace: str, pvc_name: str) -> list[Finding]:
    def read() -> list[Finding]:
        claim = r.get(r.core.read_namespaced_persistent_volume_claim, pvc_name, namespace)
        if claim is not None:
            phase, cls = claim.status.phase, claim.spec.storage_class_name
            status: Status = "ok" if phase == "Bound" else "warn"
            return [Finding("storage", status, f"PVC {pvc_name} is {phase} (class {cls})")]
        classes = r.get(r.storage.list_storage_class)
        default = [
            c.metadata.name
            for c in (classes.items if classes else [])
            if (c.metadata.annotations or {}).get(DEFAULT_CLASS) == "true"
        ]
        if not default:
            return [
                Finding(
                    "storage",
                    "missing",
                    f"no PVC {pvc_name} yet and no default StorageClass for it: set "
                    "storageClassName (ReadWriteMany) in k8s/base/storage.yaml",
                )
            ]
        return [
            Finding(
                "storage",
                "ok",
                f"no PVC {pvc_name} yet; the default StorageClass {default[0]} will provision "
                "it (it must offer ReadWriteMany)",
            )
        ]

    return _guarded("storage", read)


def _gpus(r: _Reader, selector: dict[str, str], resource: str, wanted: int) -> list[Finding]:
    def read() -> list[Finding]:
        label = ",".join(f"{k}={v}" for k, v in selector.items())
        nodes = r.get(r.core.list_node, label_selector=label)
        counts = [int((n.status.allocatable or {}).get(resource, "0")) for n in nodes.items]
        best = max(counts, default=0)
        if best < wanted:
            return [
                Finding(
                    "gpu nodes",
                    "missing",
                    f"{len(counts)} node(s) labelled {label or '(any)'}, at most {best} "
                    f"allocatable {resource}; the GPU steps need {wanted} on one node",
                )
            ]
        return [
            Finding(
                "gpu nodes",
                "ok",
                f"{len(counts)} node(s) labelled {label}, up to {best} {resource} each",
            )
        ]

    return _guarded("gpu nodes", read)


def _cluster_roles(r: _Reader) -> list[Finding]:
    findings = []
    for name in CLUSTER_ROLES:

        def one(name: str = name) -> list[Finding]:
            found = r.get(r.rbac.read_cluster_role, name)
            status: Status = "ok" if found is not None else "missing"
            detail = "bound in the namespace by k8s/" + (
                "base/rbac.yaml" if name == "kubeflow-edit" else "jobs/schedule/scheduler.yaml"
            )
            return [Finding(f"clusterrole {name}", status, detail)]

        findings += _guarded(f"clusterrole {name}", one)
    return findings


def _overlay(r: _Reader, namespace: str) -> list[Finding]:
    """What `kubectl apply -k k8s/overlays/<env>` creates: this project's step, not a cluster
    prerequisite, so its absence only warns."""

    def read() -> list[Finding]:
        found = r.get(r.core.read_namespaced_config_map, "shopguide-feast", namespace)
        if found is None:
            return [
                Finding(
                    "overlay",
                    "warn",
                    f"not applied yet (no ConfigMap shopguide-feast in {namespace}): kubectl "
                    "apply -k k8s/overlays/<env>",
                )
            ]
        return [Finding("overlay", "ok", f"ConfigMap shopguide-feast in {namespace}")]

    return _guarded("overlay", read)


def check_cluster(api: k8s.ApiClient, params: Params, namespace: str) -> list[Finding]:
    """Every check, in the order the README's steps need them."""
    r = _Reader(api)
    k = params.kubeflow
    mode, findings = _kserve_mode(r)
    findings = _crds(r, serverless=mode != "RawDeployment") + findings
    findings += _knative_features(r, mode, params.deploy.canary_traffic_percent is not None)
    findings += _profile(r, namespace)
    findings += _cluster_roles(r)
    findings += _storage(r, namespace, params.deploy.data_pvc)
    wanted = max(k.accelerator_limit, k.train_accelerator_limit)
    findings += _gpus(r, k.gpu_node_selector, k.accelerator_type, wanted)
    findings += _overlay(r, namespace)
    return findings


def connect(kubeconfig: str | None = None, context: str | None = None) -> k8s.ApiClient:
    from kubernetes.config import ConfigException, new_client_from_config

    try:
        return new_client_from_config(config_file=kubeconfig, context=context)
    except (ConfigException, OSError) as exc:
        raise ShopguideError(f"no cluster to check: {exc}") from exc
