"""Render the KServe InferenceService for a registry version with KServe's own API models,
so the manifest has exactly the shape the cluster's CRD accepts."""

from __future__ import annotations

from pathlib import Path

import yaml
from kserve import (
    V1beta1InferenceService,
    V1beta1InferenceServiceSpec,
    V1beta1PredictorSpec,
    constants,
)
from kubernetes.client import (
    ApiClient,
    V1Container,
    V1EnvVar,
    V1ObjectMeta,
    V1ResourceRequirements,
    V1SecurityContext,
)

from shopguide.config import DeployParams, ServingParams
from shopguide.io import atomic_path


def inference_service(version: str, deploy: DeployParams, serving: ServingParams) -> dict:
    container = V1Container(
        name="kserve-container",
        image=deploy.predictor_image,
        args=["serve", "--model-dir", "/mnt/models", "--http-port", "8080"],
        env=[
            V1EnvVar(name="STORAGE_URI", value=f"{deploy.storage_uri_prefix}/{version}"),
            # torch would otherwise size its thread pool by the node's cores, not the limit.
            V1EnvVar(name="OMP_NUM_THREADS", value="2"),
        ],
        resources=V1ResourceRequirements(
            requests={"cpu": "1", "memory": "2Gi"}, limits={"cpu": "2", "memory": "4Gi"}
        ),
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
                containers=[container],
            )
        ),
    )
    return ApiClient().sanitize_for_serialization(isvc)


def render_inference_service(
    version: str, deploy: DeployParams, serving: ServingParams, out: Path
) -> Path:
    manifest = inference_service(version, deploy, serving)
    with atomic_path(out) as tmp:
        tmp.write_text(yaml.safe_dump(manifest, sort_keys=False))
    return out
