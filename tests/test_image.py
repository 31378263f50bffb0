"""Opt-in (SHOPGUIDE_IMAGE_TEST=1): build the CPU pipeline image with podman and run it.

Not in the default run: it needs podman, runc and debootstrap (apt), network access to Debian
and PyPI, and several minutes. When no image registry is reachable the Debian base is made
locally with debootstrap and imported into podman. Wheels in SHOPGUIDE_WHEELS (a directory,
mounted into the build) stand in for the PyTorch index when that is not reachable either, and
the CA bundle named by PIP_CERT is mounted in for TLS-intercepting proxies.
Podman inside a container may also need `default_ulimits = []` under `[containers]` in
/etc/containers/containers.conf.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
BASE = "docker.io/library/debian:bookworm-slim"
LOCAL_BASE = "localhost/shopguide-debian:bookworm"
IMAGE = "localhost/shopguide:test"
PODMAN = ["podman", "--runtime", "runc"]

pytestmark = [
    pytest.mark.skipif(
        os.environ.get("SHOPGUIDE_IMAGE_TEST") != "1",
        reason="opt-in image build: set SHOPGUIDE_IMAGE_TEST=1 (needs podman, runc, debootstrap)",
    ),
]


def sh(args: list[str], timeout: int, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(args, check=True, timeout=timeout, text=True, **kwargs)


def base_image(tmp: Path) -> str:
    """Debian bookworm from the registry, or else a debootstrapped one imported into podman
    (made once, then reused)."""
    pulled = subprocess.run([*PODMAN, "pull", "-q", BASE], capture_output=True, timeout=120)
    if pulled.returncode == 0:
        return BASE
    if subprocess.run([*PODMAN, "image", "exists", LOCAL_BASE], timeout=60).returncode == 0:
        return LOCAL_BASE
    rootfs = tmp / "rootfs"
    sh(
        [
            "debootstrap",
            "--variant=minbase",
            "bookworm",
            str(rootfs),
            "http://deb.debian.org/debian",
        ],
        timeout=1800,
        capture_output=True,
    )
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    sh([*PODMAN, "import", "-", LOCAL_BASE], timeout=600, stdin=tar.stdout, capture_output=True)
    assert tar.wait() == 0
    return LOCAL_BASE


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> str:
    for tool in ("podman", "runc", "debootstrap"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} not installed (apt-get install podman runc debootstrap)")
    base = base_image(tmp_path_factory.mktemp("base"))
    build = [*PODMAN, "build", "-f", "images/Containerfile", "--target", "pipeline"]
    build += ["--build-arg", f"BASE={base}", "-t", IMAGE]
    wheels = os.environ.get("SHOPGUIDE_WHEELS")
    if wheels:
        build += ["-v", f"{wheels}:/wheels:ro", "--build-arg", "PIP_FIND_LINKS=/wheels"]
        build += ["--build-arg", "TORCH_INDEX="]
    # Behind a TLS-intercepting proxy the host's CA bundle (pip's PIP_CERT) goes in as well.
    if os.environ.get("PIP_CERT"):
        build += ["-v", f"{os.environ['PIP_CERT']}:/etc/pip-ca.crt:ro"]
        build += ["--build-arg", "PIP_CERT=/etc/pip-ca.crt"]
    sh([*build, "."], timeout=3600, cwd=ROOT)
    return IMAGE


def test_image_runs_the_cli(image: str) -> None:
    out = sh([*PODMAN, "run", "--rm", image, "--help"], timeout=300, capture_output=True)
    for command in ("ingest", "train", "serve", "pipeline"):
        assert command in out.stdout
    torch = sh(
        [
            *PODMAN,
            "run",
            "--rm",
            "--entrypoint",
            "python3",
            image,
            "-c",
            "import torch, shopguide; print(torch.__version__, torch.version.cuda)",
        ],
        timeout=300,
        capture_output=True,
    )
    assert torch.stdout.split()[1] == "None", "the CPU image must not carry CUDA torch"


def test_image_runs_the_ingest_step(image: str, sample: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o777)  # the image runs as uid 1000
    sh(
        [
            *PODMAN,
            "run",
            "--rm",
            "-v",
            f"{sample.resolve()}:/data/sample.csv:ro",
            "-v",
            f"{out}:/out",
            image,
            "ingest",
            "--source",
            "/data/sample.csv",
            "--events",
            "/out/events.parquet",
            "--exposures",
            "/out/exposures.parquet",
            "--summary",
            "/out/ingest.json",
        ],
        timeout=900,
    )
    events = pd.read_parquet(out / "events.parquet")
    assert len(events) > 1000
    assert (out / "ingest.json").is_file()
