"""Components of the two gate outcomes: `promote` (as `shopguide promote`) with the cluster
deployment, and the refusal."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Model, Output

from components.settings import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def promote(
    model: Input[Model],
    pretrained: Input[Model],
    decision: Input[Artifact],
    evaluation: Input[Artifact],
    training_set: Input[Dataset],
    raw_path: str,
    registry: str,
    params_json: str,
    promotion: Output[Artifact],
    inference_service: Output[Artifact],
) -> str:
    """Register the gate-approved candidate as champion and render its InferenceService.

    The paths in the parameters are replaced by the pipeline's (`raw_path`, `registry`) and by
    the `inference_service` artifact, so the registry metadata records what this run used and
    nothing is written relative to the working directory. Returns "promoted <version>".
    """
    from pathlib import Path

    from shopguide.logs import setup_logging

    setup_logging()
    from shopguide.config import params_from_json
    from shopguide.promote import promote_step

    p = params_from_json(params_json)
    p = p.model_copy(
        update={
            "data": p.data.model_copy(update={"raw_path": Path(raw_path)}),
            "registry": p.registry.model_copy(update={"path": Path(registry)}),
            "deploy": p.deploy.model_copy(update={"output": Path(inference_service.path)}),
        }
    )
    record = promote_step(
        Path(model.path),
        Path(decision.path),
        Path(evaluation.path),
        Path(training_set.path),
        Path(promotion.path),
        p,
        Path(pretrained.path),
    )
    return f"promoted {record['version']}"


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def deploy_champion(promotion: Input[Artifact], params_json: str) -> str:
    """Create or patch the promoted version's InferenceService through the Kubernetes API
    (KServe client, as the pod's service account), in the namespace the run runs in: the
    profile whose volume holds the registry and whose RoleBinding allows it
    (`deploy.namespace` outside a pod).

    A task of its own so that retrying a transient API failure never registers the model twice.
    Returns "created <namespace>/<name>" or "patched <namespace>/<name>".
    """
    from pathlib import Path

    from shopguide.logs import setup_logging

    setup_logging()
    from shopguide.config import params_from_json
    from shopguide.deploy import deploy_version, pod_namespace
    from shopguide.io import read_json

    p = params_from_json(params_json)
    deploy = p.deploy.model_copy(update={"namespace": pod_namespace() or p.deploy.namespace})
    return deploy_version(read_json(Path(promotion.path))["version"], deploy, p.serving)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def report_refusal(decision: Input[Artifact], refusal: Output[Artifact]) -> str:
    """Record why the gate refused the candidate; the champion stays as it is.

    The record has the shape `shopguide promote` writes for a refused decision. Returns
    "refused: <failed checks>".
    """
    import logging
    from pathlib import Path

    from shopguide.logs import setup_logging

    setup_logging()
    from shopguide.io import read_json, write_json

    result = read_json(Path(decision.path))
    failed = [
        r for r, c in zip(result["reasons"], result["checks"], strict=True) if not c["passed"]
    ]
    write_json(
        Path(refusal.path),
        {"promoted": False, "version": None, "champion": result["champion"], "reasons": failed},
    )
    logging.getLogger("shopguide").warning(
        "not promoted; champion %s unchanged: %s", result["champion"], "; ".join(failed)
    )
    return "refused: " + "; ".join(failed)
