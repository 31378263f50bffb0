"""The `promote` step: register a gate-approved model as the new champion and render its
KServe InferenceService. A refused or missing decision changes nothing and is an error (a
refusal: GateRefused, exit code 3, after the refusal record is written)."""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

from shopguide.config import Params
from shopguide.errors import GateRefused, ShopguideError
from shopguide.io import fingerprint, read_json, write_json
from shopguide.model.store import missing_files
from shopguide.registry import Version, model_fingerprint, register, versions

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


def _approved(decision: dict, decision_path: Path, model_dir: Path, registry: Path) -> None:
    """Refuse a passed decision about another model or another registry: only the weights the
    gate judged, against the registry it judged in, may be promoted."""
    judged = decision.get("candidate_fingerprint")
    if not judged:
        raise ShopguideError(
            f"{decision_path}: the gate judged no candidate model (floors only); "
            "re-run gate with the candidate (--model-dir)"
        )
    if model_fingerprint(model_dir) != judged:
        raise ShopguideError(
            f"{model_dir}: not the model the gate approved ({decision_path} judged "
            f"{decision.get('candidate')}); re-run gate on it"
        )
    gated_in = decision.get("registry")
    if gated_in is None or Path(gated_in).resolve() != Path(registry).resolve():
        raise ShopguideError(
            f"{decision_path}: the gate compared against registry {gated_in}, "
            f"promotion would register in {registry}; re-run gate against {registry}"
        )


def _same_champion(decision: dict, decision_path: Path) -> Callable[[Version | None], None]:
    """The registry check run under its lock: the champion is still the one the candidate
    was compared with (another promotion in between makes the decision stale)."""

    def check(current: Version | None) -> None:
        name = current.name if current else None
        if name != decision.get("champion"):
            raise ShopguideError(
                f"{decision_path}: the gate compared the candidate with champion "
                f"{decision.get('champion')}, the champion is now {name}; re-run gate"
            )

    return check


def _architecture(config: dict) -> dict:
    """The model kind for `models list`; a routed model's is its base model's, with its count
    of fine-tuned copies (shopguide.model.routed)."""
    if config.get("kind") == "routed":
        return {"model": (config.get("base") or {}).get("kind"), "routes": len(config["routes"])}
    return {"model": config.get("kind")}


def promote_step(
    model_dir: Path,
    decision_path: Path,
    evaluation: Path,
    training_set: Path,
    out: Path,
    params: Params,
    parent_dir: Path | None = None,
) -> dict:
    """Register the gate-approved `model_dir`; `parent_dir` is the model it was fine-tuned
    from (its weights identify the registered parent version, if any)."""
    from shopguide.deploy import render_inference_service  # KServe: not for a declared model

    if not Path(decision_path).is_file():
        raise ShopguideError(f"{decision_path}: no gate decision (run gate first)")
    decision = read_json(decision_path)
    if not decision.get("passed"):
        reasons, checks = decision.get("reasons", []), decision.get("checks", [])
        write_json(out, {"promoted": False, "version": None, "reasons": reasons})
        failed = [r for r, c in zip(reasons, checks, strict=False) if not c.get("passed")]
        raise GateRefused(
            f"{decision_path}: the gate refused the candidate; not promoted, champion unchanged"
            + "".join(f"\n  - {r}" for r in failed)
        )
    _approved(decision, Path(decision_path), Path(model_dir), params.registry.path)
    if Path(params.deploy.output).is_dir():  # found out before the champion moves, not after
        raise ShopguideError(f"{params.deploy.output}: deploy.output is a directory, not a file")
    parent = None
    if parent_dir is not None and not missing_files(parent_dir):
        parent = model_fingerprint(parent_dir)
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
        **_architecture(read_json(Path(model_dir) / "config.json")),
    }
    version = register(
        params.registry.path,
        model_dir,
        metadata,
        guard=_same_champion(decision, Path(decision_path)),
    )
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
