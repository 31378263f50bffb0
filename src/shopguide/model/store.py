"""Model directory format: `model.safetensors` (weights) + `config.json` (nothing pickled)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError

from shopguide.errors import ShopguideError

if TYPE_CHECKING:
    from shopguide.model.routed import AnyModel

# torch is imported by the functions that build or read a model, not by this module: the
# registry and the steps that only move model files (promotion, the champion lookup) start in
# a fraction of the time without it.

WEIGHTS = "model.safetensors"
CONFIG = "config.json"


def save_model(model: AnyModel, directory: Path) -> None:
    from safetensors.torch import save_file

    from shopguide.model.routed import Routed

    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(directory / WEIGHTS))
    config = model.routing if isinstance(model, Routed) else model.config
    (directory / CONFIG).write_text(config.model_dump_json(indent=2) + "\n")


def missing_files(directory: Path) -> list[str]:
    """The model files `directory` lacks (none: it holds a model)."""
    return [f for f in (WEIGHTS, CONFIG) if not (Path(directory) / f).is_file()]


def require_model(directory: Path) -> None:
    missing = missing_files(directory)
    if missing:
        raise ShopguideError(f"{directory}: not a shopguide model (missing {', '.join(missing)})")


def load_model(directory: Path) -> AnyModel:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from shopguide.model.routed import RoutedConfig, build_routed
    from shopguide.model.zoo import build, parse_config

    directory = Path(directory)
    require_model(directory)
    try:
        raw = json.loads((directory / CONFIG).read_text())
        if not isinstance(raw, dict):
            raise ShopguideError(f"{directory / CONFIG}: invalid model config: not an object")
        if raw.get("kind") == "routed":
            model: AnyModel = build_routed(RoutedConfig.model_validate(raw))
        else:
            model = build(parse_config(raw))
    except (ValidationError, json.JSONDecodeError) as exc:
        raise ShopguideError(f"{directory / CONFIG}: invalid model config: {exc}") from exc
    try:
        state = load_file(str(directory / WEIGHTS))
    except (SafetensorError, OSError) as exc:  # truncated or not safetensors
        raise ShopguideError(f"{directory / WEIGHTS}: unreadable weights: {exc}") from exc
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:  # weights of another architecture or an older format
        raise ShopguideError(f"{directory / WEIGHTS}: does not match {CONFIG}: {exc}") from exc
    model.eval()
    return model
