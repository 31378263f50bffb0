"""How pipeline tasks run on the cluster: requests, retries, the shared volume and GPUs.

Read from the repo's params.yaml (section `kubeflow`, and `deploy` for the volume) when a
pipeline is compiled, so the compiled YAML carries them; recompile after changing them.
"""

from pathlib import Path

from kfp import compiler, kubernetes
from kfp.dsl import PipelineTask

from shopguide.config import load_params

ROOT = Path(__file__).resolve().parents[1]
PARAMS = load_params(ROOT / "params.yaml")


def on_cluster(task: PipelineTask, *, gpu: bool = False, retry: bool = False) -> PipelineTask:
    """Request CPU and memory (or a GPU node), mount the data volume and, for steps that can
    fail transiently (storage, the online store, the API server, a preempted GPU node), retry
    with exponential backoff."""
    k, deploy = PARAMS.kubeflow, PARAMS.deploy
    kubernetes.mount_pvc(task, pvc_name=deploy.data_pvc, mount_path=deploy.data_mount)
    if gpu:
        task.set_cpu_request(k.gpu_cpu_request).set_memory_request(k.gpu_memory_request)
        task.set_accelerator_type(k.accelerator_type).set_accelerator_limit(k.accelerator_limit)
        for key, value in k.gpu_node_selector.items():
            kubernetes.add_node_selector(task, label_key=key, label_value=value)
        for t in k.gpu_tolerations:
            kubernetes.add_toleration(
                task, key=t.key, operator=t.operator, value=t.value, effect=t.effect
            )
    else:
        task.set_cpu_request(k.cpu_request).set_memory_request(k.memory_request)
    if retry:
        task.set_retry(num_retries=k.retries, backoff_duration="60s", backoff_factor=2)
    return task


def compile_pipeline(pipeline, path: Path) -> Path:
    """Write `pipeline`'s IR YAML to `path`, the file to upload to Kubeflow."""
    compiler.Compiler().compile(pipeline, str(path))
    return path
