"""Submit the compiled pipelines to a Kubeflow Pipelines endpoint: upload them (a new version
when the pipeline exists), start one run, or schedule recurring runs.

Runs and schedules start the uploaded pipeline's latest version, so a schedule (unless pinned)
and the Kubernetes CronJob (which calls `shopguide pipeline run`) pick up each upload.

Authentication (`KfpAuth`): a multi-user Kubeflow's API wants a credential on every request.
From a pod, the projected ServiceAccount token (audience `pipelines.kubeflow.org`) at
KF_PIPELINES_SA_TOKEN_PATH, read again for every request as the kubelet rotates it; from a
laptop, a bearer token (SHOPGUIDE_KFP_TOKEN or --token, e.g. `kubectl create token`) or the
session cookie of the Kubeflow login (SHOPGUIDE_KFP_COOKIE or --cookie).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import kfp
import kfp_server_api
import yaml
from kfp.client import KF_PIPELINES_SA_TOKEN_ENV, KF_PIPELINES_SA_TOKEN_PATH
from kfp.client.set_volume_credentials import ServiceAccountTokenVolumeCredentials
from kfp_server_api.exceptions import ApiException
from urllib3.exceptions import HTTPError

from shopguide.config import KubeflowParams
from shopguide.errors import ShopguideError

log = logging.getLogger(__name__)
# The pipeline steps run as this ServiceAccount (k8s/base): it may patch InferenceServices.
SERVICE_ACCOUNT = "shopguide-pipeline"


@dataclass(frozen=True)
class PipelineVersion:
    pipeline_id: str
    version_id: str
    name: str


def pipeline_name(package: Path) -> str:
    """The name compiled into the package (`pipelineInfo.name`), which KFP lists it under."""
    if not package.is_file():
        raise ShopguideError(f"{package}: no compiled pipeline (python -m pipelines.<name>)")
    try:
        return next(yaml.safe_load_all(package.read_text()))["pipelineInfo"]["name"]
    except (yaml.YAMLError, KeyError, TypeError, StopIteration) as exc:
        raise ShopguideError(f"{package}: not a compiled KFP pipeline ({exc})") from exc


def version_name(package: Path) -> str:
    """Versions are named by content, so uploading an unchanged package is refused by KFP
    rather than stored twice."""
    return "sha256-" + hashlib.sha256(package.read_bytes()).hexdigest()[:16]


TOKEN_ENV = "SHOPGUIDE_KFP_TOKEN"
COOKIE_ENV = "SHOPGUIDE_KFP_COOKIE"


@dataclass(frozen=True)
class KfpAuth:
    """What authenticates the client: a bearer token, a cookie header value
    (`name=value[; name2=value2]`) and/or a token file read again for every request."""

    token: str | None = None
    cookie: str | None = None
    token_path: Path | None = None

    def describe(self) -> str:
        """For the log: which credential, never its value."""
        parts = [
            *(["a bearer token"] if self.token else []),
            *(["a session cookie"] if self.cookie else []),
            *([f"the token file {self.token_path}"] if self.token_path else []),
        ]
        return " and ".join(parts) or "no credentials"


def resolve_auth(
    token: str | None = None,
    cookie: str | None = None,
    environ: Mapping[str, str] = os.environ,
    default_token_path: Path = Path(KF_PIPELINES_SA_TOKEN_PATH),
) -> KfpAuth:
    """The credentials to send: an explicit token and/or cookie (option or environment) first;
    else the projected ServiceAccount token named by KF_PIPELINES_SA_TOKEN_PATH, or at kfp's
    default path when a pod has one there; else none (a single-user or port-forwarded KFP).

    A token path that is named but missing is an error: sending nothing would only come back
    as a 401/403 that no longer says why."""
    token = token or environ.get(TOKEN_ENV) or None
    cookie = cookie or environ.get(COOKIE_ENV) or None
    if token or cookie:
        return KfpAuth(token=token, cookie=cookie)
    named = environ.get(KF_PIPELINES_SA_TOKEN_ENV)
    if named:
        if not Path(named).is_file():
            raise ShopguideError(
                f"{KF_PIPELINES_SA_TOKEN_ENV}={named}: no token file there (is the projected "
                "ServiceAccount token volume mounted? see k8s/jobs/schedule/cronjob.yaml)"
            )
        return KfpAuth(token_path=Path(named))
    if default_token_path.is_file():
        return KfpAuth(token_path=default_token_path)
    return KfpAuth()


def connect(
    settings: KubeflowParams, host: str | None = None, auth: KfpAuth | None = None
) -> kfp.Client:
    """A client for the endpoint (`host` or kubeflow.host) in kubeflow.namespace, sending
    `auth` (default: `resolve_auth()`) with every request.

    kfp.Client reads KF_PIPELINES_SA_TOKEN_PATH only when it is given no host, so the token
    file goes in explicitly as credentials."""
    auth = resolve_auth() if auth is None else auth
    host = host or settings.host
    log.info("KFP %s, namespace %s, with %s", host, settings.namespace, auth.describe())
    return kfp.Client(
        host=host,
        namespace=settings.namespace,
        existing_token=auth.token,
        cookies=auth.cookie,
        credentials=(
            ServiceAccountTokenVolumeCredentials(str(auth.token_path)) if auth.token_path else None
        ),
    )


def _call(what: str, func, *args, **kwargs):
    """Turn the endpoint's errors into a ShopguideError naming what was asked."""
    try:
        return func(*args, **kwargs)
    except ApiException as exc:
        raise ShopguideError(f"KFP {what}: {exc.status} {exc.reason}: {exc.body}") from exc
    except (HTTPError, OSError) as exc:
        raise ShopguideError(f"KFP {what}: endpoint unreachable: {exc}") from exc


def upload(client: kfp.Client, package: Path) -> PipelineVersion:
    name = pipeline_name(package)
    version = version_name(package)
    pipeline_id = _call("list pipelines", client.get_pipeline_id, name)
    if pipeline_id is None:
        created = _call("upload pipeline", client.upload_pipeline, str(package), pipeline_name=name)
        pipeline_id = created.pipeline_id
    uploaded = _call(
        "upload version",
        client.upload_pipeline_version,
        str(package),
        pipeline_version_name=version,
        pipeline_id=pipeline_id,
    )
    log.info("uploaded %s version %s (%s)", name, version, uploaded.pipeline_version_id)
    return PipelineVersion(pipeline_id, uploaded.pipeline_version_id, name)


def latest_version(client: kfp.Client, name: str) -> PipelineVersion:
    pipeline_id = _call("list pipelines", client.get_pipeline_id, name)
    if pipeline_id is None:
        raise ShopguideError(f"KFP has no pipeline {name!r}; run `shopguide pipeline upload`")
    listed = _call(
        "list versions",
        client.list_pipeline_versions,
        pipeline_id,
        page_size=1,
        sort_by="created_at desc",
    )
    if not listed.pipeline_versions:
        raise ShopguideError(f"KFP pipeline {name!r} has no versions")
    return PipelineVersion(pipeline_id, listed.pipeline_versions[0].pipeline_version_id, name)


def _experiment_id(client: kfp.Client, settings: KubeflowParams) -> str:
    experiment = _call(
        "create experiment",
        client.create_experiment,
        settings.experiment,
        namespace=settings.namespace,
    )
    return experiment.experiment_id


def run(
    client: kfp.Client, settings: KubeflowParams, name: str, arguments: dict[str, object]
) -> str:
    """Start one run of the latest version; returns the run id."""
    version = latest_version(client, name)
    started = _call(
        "create run",
        client.run_pipeline,
        _experiment_id(client, settings),
        job_name=f"{name} {version.version_id}",
        pipeline_id=version.pipeline_id,
        version_id=version.version_id,
        params=arguments,
        service_account=SERVICE_ACCOUNT,
    )
    log.info("started run %s of %s", started.run_id, name)
    return started.run_id


def schedule(
    client: kfp.Client,
    settings: KubeflowParams,
    name: str,
    arguments: dict[str, object],
    cron: str,
    pin: bool = False,
) -> str:
    """A recurring run on `cron` (KFP's six-field cron, seconds first): one run at a time and no
    catch-up of slots missed while paused. Unpinned, each run starts the pipeline's latest
    version, so an upload needs no new schedule (the version id is left out, which KFP's
    backend reads as "latest" from 2.5 on); `pin` fixes the version latest now. Returns its id."""
    version = latest_version(client, name)
    body = kfp_server_api.V2beta1RecurringRun(
        experiment_id=_experiment_id(client, settings),
        display_name=f"{name} retraining",
        mode=kfp_server_api.RecurringRunMode.ENABLE,
        trigger=kfp_server_api.V2beta1Trigger(
            cron_schedule=kfp_server_api.V2beta1CronSchedule(cron=cron)
        ),
        max_concurrency=1,
        no_catchup=True,
        pipeline_version_reference=kfp_server_api.V2beta1PipelineVersionReference(
            pipeline_id=version.pipeline_id,
            pipeline_version_id=version.version_id if pin else None,
        ),
        runtime_config=kfp_server_api.V2beta1RuntimeConfig(parameters=arguments),
        service_account=SERVICE_ACCOUNT,
    )
    # kfp.Client.create_recurring_run insists on a version id; the API it wraps does not.
    created = _call(
        "create recurring run",
        client._recurring_run_api.recurring_run_service_create_recurring_run,
        recurring_run=body,
    )
    follows = version.version_id if pin else "the latest version"
    log.info(
        "scheduled %s (%s) on %r as recurring run %s", name, follows, cron, created.recurring_run_id
    )
    return created.recurring_run_id
