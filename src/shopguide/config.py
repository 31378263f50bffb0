"""Typed schema for `params.yaml`: every step reads its settings through `load_params`.

Unknown keys and wrong types are rejected on load with the dotted path of the offending field,
so a typo in `params.yaml` fails fast instead of silently falling back to a default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from shopguide.errors import ShopguideError

TASKS: tuple[str, ...] = ("cart", "fav", "buy")
BEHAVIOURS: tuple[str, ...] = ("pv", "cart", "fav", "buy")

Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
PositiveInt = Annotated[int, Field(gt=0)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=False, frozen=True)


class DataParams(Strict):
    """Where the raw events are and how much damage in them is tolerated."""

    raw_path: Path = Path("../shared/data/taobao/UserBehavior_sample.csv")
    max_malformed_fraction: Fraction = 0.001
    duckdb_memory_limit: str = "2GB"
    duckdb_threads: PositiveInt = 2


class ProtocolParams(Strict):
    """Exposure window and time split (protocol taobao-mtl-v1)."""

    window_start: int = 1511539200
    window_end: int = 1512316800
    test_start: int = 1512144000
    tasks: tuple[str, ...] = TASKS

    @model_validator(mode="after")
    def _ordered(self) -> ProtocolParams:
        if not self.window_start < self.test_start < self.window_end:
            raise ValueError("need window_start < test_start < window_end")
        unknown = set(self.tasks) - set(TASKS)
        if unknown:
            raise ValueError(f"unknown tasks {sorted(unknown)}; known: {list(TASKS)}")
        return self


class RateBounds(Strict):
    min: Fraction
    max: Fraction


class ValidationParams(Strict):
    """Thresholds of the Great Expectations suites."""

    min_events: PositiveInt = 1000
    min_exposures: PositiveInt = 1000
    max_out_of_window_fraction: Fraction = 0.001
    positive_rate: dict[str, RateBounds] = Field(
        default_factory=lambda: {
            "cart": RateBounds(min=0.001, max=0.2),
            "fav": RateBounds(min=0.0005, max=0.2),
            "buy": RateBounds(min=0.001, max=0.2),
        }
    )
    report_dir: Path = Path("reports/validation")


class FeatureParams(Strict):
    """Point-in-time behaviour features served through Feast."""

    repo: Path = Path("feature_repo")
    # Feature rows are emitted at multiples of this interval; must divide 24.
    snapshot_interval_hours: Literal[1, 2, 3, 4, 6, 8, 12, 24] = 1


class ModelParams(Strict):
    """MMoE architecture."""

    embedding_dim: PositiveInt = 16
    user_buckets: PositiveInt = 100_003
    item_buckets: PositiveInt = 200_003
    category_buckets: PositiveInt = 20_011
    num_experts: PositiveInt = 4
    expert_hidden: tuple[PositiveInt, ...] = (128, 64)
    tower_hidden: tuple[PositiveInt, ...] = (32,)
    dropout: Fraction = 0.1


class TrainParams(Strict):
    seed: int = 7
    batch_size: PositiveInt = 1024
    learning_rate: Annotated[float, Field(gt=0)] = 2e-3
    weight_decay: Annotated[float, Field(ge=0)] = 1e-5
    embedding_l2: Annotated[float, Field(ge=0)] = 1e-6
    max_epochs: PositiveInt = 20
    patience: PositiveInt = 3
    validation_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.15


class FinetuneParams(Strict):
    """Transfer to new categories (protocol taobao-transfer-v1)."""

    new_category_modulo: PositiveInt = 3
    new_category_remainder: int = 0
    learning_rate: Annotated[float, Field(gt=0)] = 1e-3
    max_epochs: PositiveInt = 10
    patience: PositiveInt = 2


class GateParams(Strict):
    auc_floor: dict[str, Fraction] = Field(
        default_factory=lambda: {"cart": 0.55, "fav": 0.55, "buy": 0.55}
    )
    max_auc_regression: Fraction = 0.01


class RegistryParams(Strict):
    path: Path = Path("registry")


class ServingParams(Strict):
    model_name: str = "shopguide"
    http_port: Annotated[int, Field(ge=0, le=65535)] = 8080
    max_candidates: PositiveInt = 1000
    ranking_weights: dict[str, float] = Field(
        default_factory=lambda: {"cart": 1.0, "fav": 0.5, "buy": 2.0}
    )


class DeployParams(Strict):
    """Values rendered into the KServe InferenceService on promotion."""

    namespace: str = "shopguide"
    predictor_image: str = "ghcr.io/shopguide/shopguide-predictor:0.1.0"
    storage_uri_prefix: str = "pvc://shopguide-models"
    min_replicas: Annotated[int, Field(ge=0)] = 1
    max_replicas: PositiveInt = 3
    output: Path = Path("k8s/rendered/inferenceservice.yaml")


class Params(Strict):
    data: DataParams = DataParams()
    protocol: ProtocolParams = ProtocolParams()
    validation: ValidationParams = ValidationParams()
    features: FeatureParams = FeatureParams()
    model: ModelParams = ModelParams()
    train: TrainParams = TrainParams()
    finetune: FinetuneParams = FinetuneParams()
    gate: GateParams = GateParams()
    registry: RegistryParams = RegistryParams()
    serving: ServingParams = ServingParams()
    deploy: DeployParams = DeployParams()

    @model_validator(mode="after")
    def _tasks_covered(self) -> Params:
        for name, mapping in (
            ("gate.auc_floor", self.gate.auc_floor),
            ("validation.positive_rate", self.validation.positive_rate),
        ):
            missing = set(self.protocol.tasks) - set(mapping)
            if missing:
                raise ValueError(f"{name} has no entry for tasks {sorted(missing)}")
        return self


def _format_errors(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "<root>"
        lines.append(f"  {where}: {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)


def load_params(path: Path | str = "params.yaml") -> Params:
    """Read and validate `params.yaml`; a missing file means all defaults."""
    path = Path(path)
    if not path.exists():
        raise ShopguideError(f"{path}: parameters file not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ShopguideError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ShopguideError(f"{path}: expected a mapping at the top level")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        raise ShopguideError(f"{path}: invalid parameters\n{_format_errors(exc)}") from exc


def params_from_json(text: str) -> Params:
    """Parse parameters passed as JSON (KFP components receive them this way)."""
    try:
        return Params.model_validate_json(text)
    except ValidationError as exc:
        raise ShopguideError(f"invalid parameters\n{_format_errors(exc)}") from exc
