"""Opt-in (SHOPGUIDE_IMAGE_TEST=1): build the CPU pipeline and predictor images with podman
and run them; with SHOPGUIDE_IMAGE_TEST_CUDA=1 also the CUDA image (several GB of wheels).

Not in the default run: it needs podman, runc and debootstrap (apt), network access to Debian
and PyPI, and several minutes. When no image registry is reachable the Debian base is made
locally with debootstrap and imported into podman. Wheels in SHOPGUIDE_WHEELS (a directory,
mounted into the build) stand in for the PyTorch index when that is not reachable either, and
the CA bundle named by PIP_CERT is mounted in for TLS-intercepting proxies. With
SHOPGUIDE_IMAGE_SIZES=<file> the images' sizes are written there as JSON (the figures in
benchmarks/results/image-sizes.json came from this).
Podman inside a container may also need `default_ulimits = []` under `[containers]` in
/etc/containers/containers.conf.
"""

from __future__ import annotations

import json
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
PREDICTOR = "localhost/shopguide-predictor:test"
CUDA = "localhost/shopguide-cuda:test"
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


def build_args(base: str) -> list[str]:
    args = ["--build-arg", f"BASE={base}"]
    wheels = os.environ.get("SHOPGUIDE_WHEELS")
    if wheels:
        args += ["-v", f"{wheels}:/wheels:ro", "--build-arg", "PIP_FIND_LINKS=/wheels"]
        args += ["--build-arg", "TORCH_INDEX="]
    # Behind a TLS-intercepting proxy the host's CA bundle (pip's PIP_CERT) goes in as well.
    if os.environ.get("PIP_CERT"):
        args += ["-v", f"{os.environ['PIP_CERT']}:/etc/pip-ca.crt:ro"]
        args += ["--build-arg", "PIP_CERT=/etc/pip-ca.crt"]
    return args


def record_size(name: str, image: str) -> None:
    """The image's size (podman's, uncompressed) into SHOPGUIDE_IMAGE_SIZES, if set."""
    out = os.environ.get("SHOPGUIDE_IMAGE_SIZES")
    if not out:
        return
    inspected = sh([*PODMAN, "image", "inspect", image], timeout=60, capture_output=True)
    size = json.loads(inspected.stdout)[0]["Size"]
    path = Path(out)
    sizes = json.loads(path.read_text()) if path.is_file() else {}
    sizes[name] = {"bytes": size, "GB": round(size / 1e9, 2)}
    path.write_text(json.dumps(sizes, indent=2, sort_keys=True) + "\n")


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> str:
    for tool in ("podman", "runc", "debootstrap"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} not installed (apt-get install podman runc debootstrap)")
    return base_image(tmp_path_factory.mktemp("base"))


@pytest.fixture(scope="module")
def image(base: str) -> str:
    build = [*PODMAN, "build", "-f", "images/Containerfile", "--target", "pipeline"]
    sh([*build, *build_args(base), "-t", IMAGE, "."], timeout=3600, cwd=ROOT)
    record_size("pipeline", IMAGE)
    return IMAGE


@pytest.fixture(scope="module")
def predictor(base: str) -> str:
    build = [*PODMAN, "build", "-f", "images/Containerfile", "--target", "predictor"]
    sh([*build, *build_args(base), "-t", PREDICTOR, "."], timeout=3600, cwd=ROOT)
    record_size("predictor", PREDICTOR)
    return PREDICTOR


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


def python_in(image: str, code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*PODMAN, "run", "--rm", "--entrypoint", "python3", image, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_predictor_image_serves_without_the_pipeline_packages(predictor: str) -> None:
    out = sh(
        [*PODMAN, "run", "--rm", predictor, "serve", "--help"], timeout=300, capture_output=True
    )
    assert "--model-dir" in out.stdout
    assert (
        python_in(
            predictor, "import kserve, feast, torch, sklearn, shopguide.serving.declared"
        ).returncode
        == 0
    )
    for module in ("kfp", "dvc", "great_expectations", "matplotlib"):
        assert python_in(predictor, f"import {module}").returncode != 0, module


@pytest.mark.skipif(
    os.environ.get("SHOPGUIDE_IMAGE_TEST_CUDA") != "1",
    reason="the CUDA image downloads several GB: set SHOPGUIDE_IMAGE_TEST_CUDA=1",
)
def test_cuda_image_has_cuda_torch_and_no_cuda_base(base: str) -> None:
    build = [*PODMAN, "build", "-f", "images/Containerfile.cuda"]
    sh([*build, *build_args(base), "-t", CUDA, "."], timeout=7200, cwd=ROOT)
    record_size("cuda", CUDA)
    torch = python_in(CUDA, "import torch; print(torch.version.cuda)")
    assert torch.returncode == 0 and torch.stdout.strip() not in ("", "None"), torch.stderr
    # The CUDA runtime only once: from torch's nvidia-* wheels, none in the system.
    libs = subprocess.run(
        [
            *PODMAN,
            "run",
            "--rm",
            "--entrypoint",
            "sh",
            CUDA,
            "-c",
            "ls /usr/local/cuda* /usr/lib/x86_64-linux-gnu/libcudart* 2>/dev/null | wc -l",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert libs.stdout.strip() == "0"
