"""Render the KServe InferenceService for a registry version with KServe's own API models,
so the manifest has exactly the shape the cluster's CRD accepts, and create or patch it in the
cluster with the KServe client."""

from __future__ import annotations

from pathlib import Path

import yaml
from kserve import (
    KServeClient,
    V1beta1InferenceService,
    V1beta1InferenceServiceSpec,
    V1beta1PredictorSpec,
    constants,
)
from kubernetes.client import (
    ApiClient,
    ApiException,
    V1ConfigMapVolumeSource,
    V1Container,
    V1EnvVar,
    V1ObjectMeta,
    V1PersistentVolumeClaimVolumeSource,
    V1ResourceRequirements,
    V1SecurityContext,
    V1Volume,
    V1VolumeMount,
)
from kubernetes.config import ConfigException

from shopguide.config import DeployParams, ServingParams
from shopguide.errors import ShopguideError
from shopguide.io import atomic_path

# The Feast configuration (online store) every pod reads: the overlay's ConfigMap, mounted at
# FEAST_CONFIG_DIR in the predictor and in every pipeline step (pipelines/cluster.py) and named
# by Feast's own FEAST_FS_YAML_FILE_PATH, which FeatureStore(repo_path=...) reads. One config
# for both sides, and no subPath over the read-only data volume.
FEAST_CONFIG_MAP = "shopguide-feast"
FEAST_CONFIG_DIR = "/etc/shopguide/feast"
FEAST_CONFIG_ENV = "FEAST_FS_YAML_FILE_PATH"
FEAST_CONFIG_FILE = f"{FEAST_CONFIG_DIR}/feature_store.yaml"
# A pod's own namespace, as the kubelet mounts it with the ServiceAccount token.
POD_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def inference_service_model(
    version: str, deploy: DeployParams, serving: ServingParams
) -> V1beta1InferenceService:
    container = V1Container(
        name="kserve-container",
        image=deploy.predictor_image,
        args=[
            "serve",
            "--model-dir",
            "/mnt/models",
            "--repo",
            f"{deploy.data_mount}/feature_repo",
            "--http-port",
            "8080",
        ],
        env=[
            V1EnvVar(name="STORAGE_URI", value=f"{deploy.storage_uri_prefix}/{version}"),
            # torch would otherwise size its thread pool by the node's cores, not the limit.
            V1EnvVar(name="OMP_NUM_THREADS", value="2"),
            V1EnvVar(name=FEAST_CONFIG_ENV, value=FEAST_CONFIG_FILE),
        ],
        resources=V1ResourceRequirements(
            requests={"cpu": "1", "memory": "2Gi"}, limits={"cpu": "2", "memory": "4Gi"}
        ),
        # The Feast repo on the shared volume; its configuration from the overlay's ConfigMap.
        volume_mounts=[
            V1VolumeMount(name="data", mount_path=deploy.data_mount, read_only=True),
            V1VolumeMount(name="feast-config", mount_path=FEAST_CONFIG_DIR, read_only=True),
        ],
        security_context=V1SecurityContext(
            run_as_non_root=True, run_as_user=1000, allow_privilege_escalation=False
        ),
    )
    isvc = V1beta1InferenceService(
        api_version=constants.KSERVE_V1BETA1,
        kind=constants.KSERVE_KIND_INFERENCESERVICE,
        metadata=V1ObjectMeta(
            name=serving.model_name,
            namespace=deploy.namespace,
            labels={"app.kubernetes.io/name": "shopguide", "shopguide/model-version": version},
        ),
        spec=V1beta1InferenceServiceSpec(
            predictor=V1beta1PredictorSpec(
                min_replicas=deploy.min_replicas,
                max_replicas=deploy.max_replicas,
                canary_traffic_percent=deploy.canary_traffic_percent,
                service_account_name="shopguide-predictor",
                containers=[container],
                volumes=[
                    V1Volume(
                        name="data",
                        persistent_volume_claim=V1PersistentVolumeClaimVolumeSource(
                            claim_name=deploy.data_pvc, read_only=True
                        ),
                    ),
                    V1Volume(
                        name="feast-config",
                        config_map=V1ConfigMapVolumeSource(name=FEAST_CONFIG_MAP),
                    ),
                ],
            )
        ),
    )
    return isvc


def inference_service(version: str, deploy: DeployParams, serving: ServingParams) -> dict:
    return ApiClient().sanitize_for_serialization(inference_service_model(version, deploy, serving))


def promotion_patch(isvc: V1beta1InferenceService) -> V1beta1InferenceService:
    """What a new version changes on an existing InferenceService: the version label and the
    predictor's containers (STORAGE_URI names the version), nothing else.

    A JSON merge patch replaces a list whole, so the containers go in as rendered; maps merge,
    so the cluster's other labels stay. Replicas are left as the cluster has them (each
    overlay's serving/ sets its own), and so is canaryTrafficPercent unless
    `deploy.canary_traffic_percent` is set: then each promotion sends it with the new version,
    which is how KServe starts a canary.
    """
    predictor = isvc.spec.predictor
    return V1beta1InferenceService(
        api_version=isvc.api_version,
        kind=isvc.kind,
        metadata=V1ObjectMeta(
            labels={"shopguide/model-version": isvc.metadata.labels["shopguide/model-version"]}
        ),
        spec=V1beta1InferenceServiceSpec(
            predictor=V1beta1PredictorSpec(
                containers=predictor.containers,
                canary_traffic_percent=predictor.canary_traffic_percent,
            )
        ),
    )


def apply_inference_service(isvc: V1beta1InferenceService, client: KServeClient) -> str:
    """Create the InferenceService as rendered, or, when it exists, merge-patch only what the
    new version changes (`promotion_patch`), so a promotion rolls the running service to the new
    version and keeps the cluster's replicas and canary setting (KServe keeps the old revision
    serving until the new one is ready, or splits traffic when a canary percent is set).
    Returns "created" or "patched"."""
    name, namespace = isvc.metadata.name, isvc.metadata.namespace
    try:
        client.api_instance.get_namespaced_custom_object(
            constants.KSERVE_GROUP,
            constants.KSERVE_V1BETA1_VERSION,
            namespace,
            constants.KSERVE_PLURAL_INFERENCESERVICE,
            name,
        )
    except ApiException as exc:
        if exc.status != 404:
            raise ShopguideError(
                f"InferenceService {namespace}/{name}: cluster answered {exc.status} {exc.reason}"
            ) from exc
        client.create(isvc, namespace=namespace)
        return "created"
    client.patch(name, promotion_patch(isvc), namespace=namespace)
    return "patched"


def pod_namespace(path: Path | None = None) -> str | None:
    """The namespace this process's pod runs in, or None outside a pod."""
    try:
        return (path or POD_NAMESPACE_FILE).read_text().strip() or None
    except OSError:
        return None


def deploy_version(
    version: str,
    deploy: DeployParams,
    serving: ServingParams,
    client: KServeClient | None = None,
    full_rollout: bool = False,
) -> str:
    """Make the cluster's InferenceService serve `version` (`apply_inference_service`), with
    the kubeconfig or in-cluster service account by default. `full_rollout` sends all traffic
    to it at once (canaryTrafficPercent 100; a rollback must not leave the version it replaces
    most of the traffic). Returns "<created|patched> <namespace>/<name>"."""
    isvc = inference_service_model(version, deploy, serving)
    if full_rollout:
        isvc.spec.predictor.canary_traffic_percent = 100
    if client is None:
        try:
            client = KServeClient()
        except ConfigException as exc:
            raise ShopguideError(f"no Kubernetes cluster to deploy {version} to: {exc}") from exc
    action = apply_inference_service(isvc, client)
    return f"{action} {deploy.namespace}/{isvc.metadata.name}"


def render_inference_service(
    version: str, deploy: DeployParams, serving: ServingParams, out: Path
) -> Path:
    manifest = inference_service(version, deploy, serving)
    with atomic_path(out) as tmp:
        tmp.write_text(yaml.safe_dump(manifest, sort_keys=False))
    return out
