"""The `promote` step: register a gate-approved model as the new champion and render its
KServe InferenceService. A refused or missing decision changes nothing."""

from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path

from shopguide.config import Params
from shopguide.deploy import render_inference_service
from shopguide.errors import ShopguideError
from shopguide.io import fingerprint, read_json, write_json
from shopguide.registry import model_fingerprint, register, versions

log = logging.getLogger(__name__)


def git_commit() -> str:
    """The code's commit: SHOPGUIDE_GIT_COMMIT (baked into images) or the checkout's HEAD."""
    if os.environ.get("SHOPGUIDE_GIT_COMMIT"):
        return os.environ["SHOPGUIDE_GIT_COMMIT"]
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=10
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def parent_version(registry: Path, parent: str | None) -> str | None:
    """The registered version whose weights are the fine-tuning parent's, if any."""
    if not parent:
        return None
    for v in reversed(versions(registry)):
        if (v.metadata.get("model_fingerprint") or model_fingerprint(v.path)) == parent:
            return v.name
    return None


def promote_step(
    model_dir: Path,
    decision_path: Path,
    evaluation: Path,
    training_set: Path,
    out: Path,
    params: Params,
    parent: str | None = None,
) -> dict:
    if not Path(decision_path).is_file():
        raise ShopguideError(f"{decision_path}: no gate decision (run gate first)")
    decision = read_json(decision_path)
    if not decision.get("passed"):
        record = {"promoted": False, "version": None, "reasons": decision.get("reasons", [])}
        write_json(out, record)
        log.warning("not promoted: the gate refused the candidate; champion unchanged")
        return record
    metadata = {
        "params": params.model_dump(mode="json"),
        "metrics": read_json(evaluation),
        "gate": decision,
        "data_fingerprint": {
            "training_set": fingerprint(training_set),
            "raw": fingerprint(params.data.raw_path)
            if Path(params.data.raw_path).is_file()
            else None,
        },
        "git_commit": git_commit(),
        "parent": parent,
        "parent_version": parent_version(params.registry.path, parent),
        "model": read_json(Path(model_dir) / "config.json").get("kind"),
    }
    version = register(params.registry.path, model_dir, metadata)
    manifest = render_inference_service(
        version.name, params.deploy, params.serving, params.deploy.output
    )
    record = {
        "promoted": True,
        "version": version.name,
        "path": str(version.path),
        "inference_service": str(manifest),
    }
    write_json(out, record)
    log.info(
        "promoted %s to champion in %s; InferenceService rendered at %s",
        version.name,
        params.registry.path,
        manifest,
    )
    return record
