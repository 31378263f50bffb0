"""`shopguide pipeline upload|run|schedule` against a recording KFP endpoint on 127.0.0.1.

The kfp client sends real HTTP to tests/fake_api.py, which answers like the KFP v2beta1 API;
the tests assert the requests that would reach the cluster, their credentials included (a
multi-user Kubeflow refuses a request without them).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from shopguide.cli import app
from shopguide.kfp_runs import version_name
from tests.fake_api import Request, fake_api

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "pipelines" / "training_pipeline.yaml"
API = "/apis/v2beta1"

pytestmark = pytest.mark.filterwarnings("ignore:This client only works:FutureWarning")


class Kfp:
    """The few KFP API endpoints the commands use, with one stored pipeline at most."""

    def __init__(self, uploaded: bool) -> None:
        self.pipeline = {"pipeline_id": "p-1", "display_name": "shopguide-training"}
        self.uploaded = uploaded

    def __call__(self, r: Request) -> tuple[int, object]:
        if (r.method, r.path) == ("GET", f"{API}/pipelines"):
            return 200, {"pipelines": [self.pipeline]} if self.uploaded else {}
        if (r.method, r.path) == ("POST", f"{API}/pipelines/upload"):
            self.uploaded = True
            return 200, self.pipeline
        if (r.method, r.path) == ("POST", f"{API}/pipelines/upload_version"):
            return 200, {"pipeline_id": "p-1", "pipeline_version_id": "pv-2"}
        if (r.method, r.path) == ("GET", f"{API}/pipelines/p-1/versions"):
            return 200, {
                "pipeline_versions": [{"pipeline_id": "p-1", "pipeline_version_id": "pv-2"}]
            }
        if (r.method, r.path) == ("GET", f"{API}/experiments"):
            return 200, {"experiments": [{"experiment_id": "e-1", "display_name": "shopguide"}]}
        if (r.method, r.path) == ("POST", f"{API}/runs"):
            return 200, {"run_id": "r-1", **r.json()}
        if (r.method, r.path) == ("POST", f"{API}/recurringruns"):
            return 200, {"recurring_run_id": "rr-1", **r.json()}
        return 404, {"error": f"no route {r.method} {r.path}"}


AUTH_ENV = ("SHOPGUIDE_KFP_TOKEN", "SHOPGUIDE_KFP_COOKIE", "KF_PIPELINES_SA_TOKEN_PATH")


@pytest.fixture(autouse=True)
def _no_ambient_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """Credentials come only from what a test sets."""
    for name in (*AUTH_ENV, "SHOPGUIDE_KFP_NAMESPACE"):
        monkeypatch.delenv(name, raising=False)


def invoke(
    kfp: Kfp, *args: str, env: dict[str, str] | None = None
) -> tuple[int, list[Request], str]:
    with fake_api(kfp) as api:
        result = CliRunner().invoke(
            app,
            ["pipeline", *args, "--host", api.url, "--params", str(ROOT / "params.yaml")],
            env=env,
        )
    # Rich wraps log lines to the terminal width; compare the words.
    return result.exit_code, api.requests, " ".join(result.output.split())


def writes(requests: list[Request]) -> list[tuple[str, str]]:
    return [(r.method, r.path) for r in requests if r.method != "GET"]


def test_upload_creates_the_pipeline_then_its_version() -> None:
    code, requests, output = invoke(Kfp(uploaded=False), "upload", "--package", str(PACKAGE))
    assert code == 0, output
    assert writes(requests) == [
        ("POST", f"{API}/pipelines/upload"),
        ("POST", f"{API}/pipelines/upload_version"),
    ]
    upload, version = (r for r in requests if r.method == "POST")
    assert upload.query["name"] == ["shopguide-training"]
    assert upload.headers["content-type"].startswith("multipart/form-data")
    assert PACKAGE.read_bytes() in upload.body
    assert version.query["pipelineid"] == ["p-1"]
    assert version.query["name"] == [version_name(PACKAGE)]


def test_upload_of_a_known_pipeline_adds_a_version_only() -> None:
    code, requests, output = invoke(Kfp(uploaded=True), "upload", "--package", str(PACKAGE))
    assert code == 0, output
    assert writes(requests) == [("POST", f"{API}/pipelines/upload_version")]


def test_run_starts_the_latest_version_with_arguments() -> None:
    code, requests, output = invoke(
        Kfp(uploaded=True), "run", "--arg", "deploy=false", "--arg", "raw_path=/mnt/x.csv"
    )
    assert code == 0, output
    assert writes(requests) == [("POST", f"{API}/runs")]
    body = requests[-1].json()
    assert body["experiment_id"] == "e-1"
    assert body["pipeline_version_reference"] == {
        "pipeline_id": "p-1",
        "pipeline_version_id": "pv-2",
    }
    assert body["runtime_config"]["parameters"] == {"deploy": False, "raw_path": "/mnt/x.csv"}
    assert body["service_account"] == "shopguide-pipeline"


def test_schedule_is_cron_one_at_a_time_without_catch_up() -> None:
    code, requests, output = invoke(Kfp(uploaded=True), "schedule", "--cron", "0 30 2 * * *")
    assert code == 0, output
    assert writes(requests) == [("POST", f"{API}/recurringruns")]
    body = requests[-1].json()
    assert body["trigger"] == {"cron_schedule": {"cron": "0 30 2 * * *"}}
    assert body["max_concurrency"] == 1
    assert body["no_catchup"] is True
    assert body["mode"] == "ENABLE"
    assert body["experiment_id"] == "e-1"
    # No version id: every scheduled run starts the latest version, so uploads need no new
    # schedule.
    assert body["pipeline_version_reference"] == {"pipeline_id": "p-1"}
    assert body["service_account"] == "shopguide-pipeline"
    assert body["display_name"] == "shopguide-training retraining"


def test_a_pinned_schedule_names_the_version_latest_now() -> None:
    code, requests, output = invoke(
        Kfp(uploaded=True), "schedule", "--pin", "--arg", "deploy=false"
    )
    assert code == 0, output
    body = requests[-1].json()
    assert body["pipeline_version_reference"] == {
        "pipeline_id": "p-1",
        "pipeline_version_id": "pv-2",
    }
    assert body["runtime_config"]["parameters"] == {"deploy": False}
    assert "pv-2" in output


def test_schedule_defaults_to_the_configured_cron() -> None:
    code, requests, _ = invoke(Kfp(uploaded=True), "schedule")
    assert code == 0
    cron = yaml.safe_load((ROOT / "params.yaml").read_text())["kubeflow"]["schedule_cron"]
    assert requests[-1].json()["trigger"]["cron_schedule"]["cron"] == cron


def test_run_of_a_pipeline_never_uploaded_fails_cleanly() -> None:
    code, requests, output = invoke(Kfp(uploaded=False), "run")
    assert code == 2
    assert "run `shopguide pipeline upload`" in output
    assert not writes(requests)


def test_endpoint_errors_and_bad_arguments_fail_without_traceback(tmp_path: Path) -> None:
    code, _, output = invoke(Kfp(uploaded=True), "run", "--arg", "novalue")
    assert code == 2
    assert "expected NAME=VALUE" in output
    code, _, output = invoke(Kfp(uploaded=True), "upload", "--package", str(tmp_path / "x.yaml"))
    assert code == 2
    assert "no compiled pipeline" in output
    code, _, output = invoke(lambda r: (500, {"error": "boom"}), "run")
    assert code == 2
    assert "KFP list pipelines: 500" in output
    assert "Traceback" not in output


def test_no_credentials_sends_none() -> None:
    """A single-user or port-forwarded KFP: nothing to send, and nothing is made up."""
    code, requests, output = invoke(Kfp(uploaded=True), "run")
    assert code == 0, output
    assert requests
    for r in requests:
        assert "authorization" not in r.headers and "cookie" not in r.headers
    assert "with no credentials" in output


def test_a_pod_sends_its_projected_token_read_again_for_every_request(tmp_path: Path) -> None:
    """The CronJob's pod: kfp.Client given a host ignores KF_PIPELINES_SA_TOKEN_PATH, so the
    token file goes in as credentials, re-read per request as the kubelet rotates it."""
    token = tmp_path / "token"
    token.write_text("pod-token-1\n")
    kfp = Kfp(uploaded=True)

    def rotating(r: Request) -> tuple[int, object]:
        token.write_text("pod-token-2\n")  # the kubelet rotates the projected token
        return kfp(r)

    code, requests, output = invoke(rotating, "run", env={"KF_PIPELINES_SA_TOKEN_PATH": str(token)})
    assert code == 0, output
    assert requests[0].headers["authorization"] == "Bearer pod-token-1"
    assert len(requests) > 2
    for r in requests[1:]:
        assert r.headers["authorization"] == "Bearer pod-token-2", (r.method, r.path)
    assert writes(requests) == [("POST", f"{API}/runs")]
    assert "pod-token" not in output  # the log names the file, never the token
    assert "with the token file" in output


def test_a_named_token_file_that_is_missing_is_an_error(tmp_path: Path) -> None:
    code, requests, output = invoke(
        Kfp(uploaded=True), "run", env={"KF_PIPELINES_SA_TOKEN_PATH": str(tmp_path / "none")}
    )
    assert code == 2
    assert "no token file there" in output
    assert requests == []


@pytest.mark.parametrize("how", ["env", "option"])
def test_a_laptop_sends_its_bearer_token(how: str) -> None:
    """E.g. `kubectl create token default-editor --audience pipelines.kubeflow.org`; it wins over
    a token file."""
    env = {"KF_PIPELINES_SA_TOKEN_PATH": "/nonexistent/token"}
    if how == "env":
        code, requests, output = invoke(
            Kfp(uploaded=False), "upload", env={**env, "SHOPGUIDE_KFP_TOKEN": "laptop-token"}
        )
    else:
        code, requests, output = invoke(
            Kfp(uploaded=False), "upload", "--token", "laptop-token", env=env
        )
    assert code == 0, output
    assert len(writes(requests)) == 2
    assert {r.headers["authorization"] for r in requests} == {"Bearer laptop-token"}
    assert "laptop-token" not in output


def test_a_laptop_sends_its_login_cookie() -> None:
    """The session cookie of the Kubeflow login (oauth2-proxy), from the environment or
    --cookie; schedule goes through the raw recurring-run API and carries it too."""
    cookie = "oauth2_proxy_kubeflow=abc123"
    code, requests, output = invoke(
        Kfp(uploaded=True), "schedule", env={"SHOPGUIDE_KFP_COOKIE": cookie}
    )
    assert code == 0, output
    assert writes(requests) == [("POST", f"{API}/recurringruns")]
    for r in requests:
        assert r.headers["cookie"] == cookie
        assert "authorization" not in r.headers
    code, requests, _ = invoke(Kfp(uploaded=True), "run", "--cookie", "session=x")
    assert code == 0
    assert {r.headers["cookie"] for r in requests} == {"session=x"}


def test_namespace_option_or_env_moves_the_run_into_that_profile() -> None:
    """The dev CronJob sets SHOPGUIDE_KFP_NAMESPACE from its pod's namespace, so it submits
    into shopguide-dev, not the kubeflow.namespace (prod) of the image's params.yaml."""
    for args, env in (
        (("--namespace", "shopguide-dev"), None),
        ((), {"SHOPGUIDE_KFP_NAMESPACE": "shopguide-dev"}),
    ):
        code, requests, output = invoke(Kfp(uploaded=True), "run", *args, env=env)
        assert code == 0, output
        experiments = [r for r in requests if r.path == f"{API}/experiments"]
        assert experiments
        assert all(r.query["namespace"] == ["shopguide-dev"] for r in experiments)
