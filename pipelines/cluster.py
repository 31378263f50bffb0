"""How pipeline tasks run on the cluster: requests, retries, the shared volume, the Feast
config and GPUs.

Read from the repo's params.yaml (section `kubeflow`, and `deploy` for the volume) when a
pipeline is compiled, so the compiled YAML carries them; recompile after changing them. All of
it is Kubernetes platform config, which KFP's local runner ignores.
"""

from pathlib import Path

from kfp import compiler, kubernetes
from kfp.dsl import PipelineTask

from shopguide.config import load_params
from shopguide.deploy import FEAST_CONFIG_DIR, FEAST_CONFIG_ENV, FEAST_CONFIG_FILE, FEAST_CONFIG_MAP

ROOT = Path(__file__).resolve().parents[1]
PARAMS = load_params(ROOT / "params.yaml")
# The pod annotation that carries the Feast config's path into FEAST_FS_YAML_FILE_PATH through
# the downward API: set on the cluster only, where the ConfigMap is mounted.
FEAST_CONFIG_ANNOTATION = "shopguide/feast-config"


def on_cluster(
    task: PipelineTask, *, gpu: bool = False, retry: bool = False, gpus: int | None = None
) -> PipelineTask:
    """Request CPU and memory (or a GPU node with `gpus` GPUs, default
    kubeflow.accelerator_limit), mount the data volume and the namespace's Feast config (the
    ConfigMap the predictor reads too) and, for steps that can fail transiently (storage, the
    online store, the API server, a preempted GPU node), retry with exponential backoff."""
    k, deploy = PARAMS.kubeflow, PARAMS.deploy
    kubernetes.mount_pvc(task, pvc_name=deploy.data_pvc, mount_path=deploy.data_mount)
    kubernetes.use_config_map_as_volume(task, FEAST_CONFIG_MAP, mount_path=FEAST_CONFIG_DIR)
    kubernetes.add_pod_annotation(task, FEAST_CONFIG_ANNOTATION, FEAST_CONFIG_FILE)
    kubernetes.use_field_path_as_env(
        task, FEAST_CONFIG_ENV, f"metadata.annotations['{FEAST_CONFIG_ANNOTATION}']"
    )
    if gpu:
        gpus = gpus or k.accelerator_limit
        task.set_cpu_request(k.gpu_cpu_request).set_memory_request(k.gpu_memory_request)
        task.set_accelerator_type(k.accelerator_type).set_accelerator_limit(gpus)
        if gpus > 1:
            # NCCL between the step's processes goes through shared memory; a pod's default
            # /dev/shm is 64 MiB.
            kubernetes.empty_dir_mount(
                task, volume_name="dshm", mount_path="/dev/shm", medium="Memory", size_limit="8Gi"
            )
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


def uncached(task: PipelineTask, *, retry: bool = False) -> PipelineTask:
    """`on_cluster`, never taken from KFP's cache: for a step that reads or writes state no
    cache key sees (the registry, the volume's profiles and Feast repo, files named by path)."""
    return on_cluster(task, retry=retry).set_caching_options(enable_caching=False)


def compile_pipeline(pipeline, path: Path) -> Path:
    """Write `pipeline`'s IR YAML to `path`, the file to upload to Kubeflow."""
    compiler.Compiler().compile(pipeline, str(path))
    return path
