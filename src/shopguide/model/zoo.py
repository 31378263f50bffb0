"""The model zoo: every model by name, its config class, and the one way to build a config
from `params.yaml` or rebuild a model from its saved JSON (the `kind` field says which)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, TypeAdapter, ValidationError

from shopguide.config import ModelParams
from shopguide.errors import ShopguideError
from shopguide.model.aitm import AITM, AITMConfig
from shopguide.model.base import ModelConfig, MultiTaskModel
from shopguide.model.cross_stitch import CrossStitch, CrossStitchConfig
from shopguide.model.esmm import ESMM, ESMMConfig
from shopguide.model.mmoe import MMoE, MMoEConfig
from shopguide.model.ple import PLE, PLEConfig
from shopguide.model.shared_bottom import SharedBottom, SharedBottomConfig
from shopguide.model.single_task import SingleTask, SingleTaskConfig
from shopguide.model.soft_sharing import SoftSharing, SoftSharingConfig
from shopguide.model.tensor_factorised import TensorFactorised, TensorFactorisedConfig

MODELS: dict[str, tuple[type[ModelConfig], type[MultiTaskModel]]] = {
    "single_task": (SingleTaskConfig, SingleTask),
    "shared_bottom": (SharedBottomConfig, SharedBottom),
    "soft_sharing": (SoftSharingConfig, SoftSharing),
    "cross_stitch": (CrossStitchConfig, CrossStitch),
    "tensor_factorised": (TensorFactorisedConfig, TensorFactorised),
    "mmoe": (MMoEConfig, MMoE),
    "ple": (PLEConfig, PLE),
    "esmm": (ESMMConfig, ESMM),
    "aitm": (AITMConfig, AITM),
}

AnyConfig = Annotated[
    SingleTaskConfig
    | SharedBottomConfig
    | SoftSharingConfig
    | CrossStitchConfig
    | TensorFactorisedConfig
    | MMoEConfig
    | PLEConfig
    | ESMMConfig
    | AITMConfig,
    Field(discriminator="kind"),
]
_ANY_CONFIG: TypeAdapter[ModelConfig] = TypeAdapter(AnyConfig)


def parse_config(raw: dict) -> ModelConfig:
    """A saved config; models written before the zoo existed have no `kind` and are MMoEs."""
    return _ANY_CONFIG.validate_python({"kind": "mmoe", **raw})


def make_config(params: ModelParams, **inputs: object) -> ModelConfig:
    """The config of model `params.name`: `inputs` (tasks, dense features and their statistics)
    plus the fields of `params` that this model declares."""
    config_class = MODELS[params.name][0]
    wanted = set(config_class.model_fields) & set(type(params).model_fields) - set(inputs)
    try:
        return config_class(**inputs, **{k: getattr(params, k) for k in wanted})
    except ValidationError as exc:  # a combination only the model can judge (ESMM's chain)
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ShopguideError(f"model ({params.name}): invalid settings: {problems}") from exc


def build(config: ModelConfig) -> MultiTaskModel:
    return MODELS[config.kind][1](config)  # type: ignore[attr-defined]
