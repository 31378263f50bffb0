"""`shopguide serve` as a subprocess on a free loopback port: what the gate's serving check,
the tests and the load benchmark run, so all of them exercise the real server."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import yaml

from shopguide.config import Params
from shopguide.errors import ShopguideError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


@contextlib.contextmanager
def running_server(
    params: Params,
    feature_repo: Path,
    model_dir: Path | None = None,
    registry: Path | None = None,
    workdir: Path | None = None,
    timeout_s: float = 120.0,
    extra_env: dict[str, str] | None = None,
    declared: bool = False,
) -> Iterator[tuple[str, subprocess.Popen, Path]]:
    """`shopguide serve` (`declared`: `shopguide dataset serve`) in a subprocess on a free
    127.0.0.1 port, ready when yielded as (base URL, process, log path); stopped on exit
    whatever happened."""
    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sg-serve-")))
        params_file = workdir / "params.yaml"
        params_file.write_text(yaml.safe_dump(params.model_dump(mode="json")))
        port, log_path = free_port(), workdir / "server.log"
        command = [sys.executable, "-m", "shopguide.cli", *(["dataset"] if declared else [])]
        command += ["serve", "--params", str(params_file)]
        command += ["--repo", str(Path(feature_repo).resolve()), "--host", "127.0.0.1"]
        command += ["--http-port", str(port)]
        if model_dir is not None:
            command += ["--model-dir", str(Path(model_dir).resolve())]
        else:
            command += ["--registry", str(Path(registry).resolve())]
        env = {**os.environ, "SHOPGUIDE_LOG_LEVEL": "WARNING", **(extra_env or {})}
        with log_path.open("w") as out:
            process = subprocess.Popen(
                command, cwd=workdir, stdout=out, stderr=subprocess.STDOUT, env=env
            )
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + timeout_s
            with httpx.Client(base_url=url, timeout=5) as client:
                while True:
                    if process.poll() is not None:
                        raise ShopguideError(
                            f"the server exited with code {process.returncode} before it was "
                            f"ready:\n{log_tail(log_path)}"
                        )
                    with contextlib.suppress(httpx.TransportError):
                        if client.get("/v2/health/ready").status_code == 200:
                            break
                    if time.monotonic() > deadline:
                        raise ShopguideError(
                            f"the server was not ready after {timeout_s:.0f}s:\n"
                            f"{log_tail(log_path)}"
                        )
                    time.sleep(0.25)
            yield url, process, log_path
        finally:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
