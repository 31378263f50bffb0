"""Typed schema for `params.yaml`: every step reads its settings through `load_params`.

Unknown keys and wrong types are rejected on load with the dotted path of the offending field,
so a typo in `params.yaml` fails fast instead of silently falling back to a default.
"""

from __future__ import annotations

import reprlib
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from shopguide.errors import ShopguideError

TASKS: tuple[str, ...] = ("cart", "fav", "buy")
# Impression-level datasets (aliexpress, aliccp) label clicks and conversions (= buy); event
# logs label a click by a page view (`pv`) of the item.
KNOWN_TASKS: tuple[str, ...] = ("click", *TASKS)
BEHAVIOURS: tuple[str, ...] = ("pv", "cart", "fav", "buy")
# The event behind each task's label in an event log.
TASK_BEHAVIOUR: dict[str, str] = {"click": "pv", "cart": "cart", "fav": "fav", "buy": "buy"}

Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
PositiveInt = Annotated[int, Field(gt=0)]
# The feature views built from events, each snapshotted on its own grain
# (shopguide.feature_spec.VIEWS, which imports this).
FeatureEntity = Literal["user", "item", "category", "user_item", "user_category", "user_sequence"]
LearningRate = Annotated[float, Field(gt=0, allow_inf_nan=False)]  # inf passes gt=0 alone


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=False, frozen=True)


class DataParams(Strict):
    """Where the raw events are and how much damage in them is tolerated."""

    raw_path: Path = Path("../shared/data/taobao/UserBehavior_sample.csv")
    # Which format raw_path is in (shopguide.adapters): taobao, rees46, aliexpress, aliccp.
    adapter: Literal["taobao", "rees46", "aliexpress", "aliccp"] = "taobao"
    max_malformed_fraction: Fraction = 0.001
    duckdb_memory_limit: str = "2GB"
    duckdb_threads: PositiveInt = 2
    # Where DuckDB spills past its memory limit; None: <system temp dir>/shopguide-duckdb.
    duckdb_temp_directory: Path | None = None
    # Drop events that repeat another exactly (all five canonical columns; real REES46 files
    # hold a few), counted on the data card; else validation judges them
    # (validation.max_duplicate_fraction). The taobao and rees46 adapters.
    drop_duplicate_events: bool = False

    @model_validator(mode="after")
    def _dedupe_supported(self) -> DataParams:
        if self.drop_duplicate_events and self.adapter not in ("taobao", "rees46"):
            raise ValueError(
                f"drop_duplicate_events is for the taobao and rees46 adapters, not {self.adapter}"
            )
        return self


class AuxTaskParams(Strict):
    """An auxiliary task trained beside the ranked (binary) tasks, never served or gated. Its
    label is the number of the user's `behavior` events on the item at or after t0: binary
    (any), regression (the count, or log1p of it) or multiclass (the count capped at
    n_classes - 1). Its loss weight is `train.task_weights[name]` (default 1)."""

    name: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$")]
    type: Literal["binary", "regression", "multiclass"]
    behavior: Literal["pv", "cart", "fav", "buy"]
    transform: Literal["none", "log1p"] = "log1p"  # regression label
    loss: Literal["mse", "huber"] = "huber"  # regression loss
    huber_delta: Annotated[float, Field(gt=0)] = 1.0
    n_classes: Annotated[int, Field(ge=2)] = 2  # multiclass


class RankingProtocolParams(Strict):
    """Protocol taobao-rank-v1: at the moment a user first acts on an item (task b), rank it
    among the other items they viewed in the `lookback_s` before."""

    lookback_s: PositiveInt = 86_400
    min_candidates: Annotated[int, Field(ge=2)] = 2


class ProtocolParams(Strict):
    """Exposure window, time split and labels (protocols taobao-mtl-v1 and taobao-rank-v1)."""

    window_start: int = 1511539200
    window_end: int = 1512316800
    test_start: int = 1512144000
    tasks: Annotated[tuple[str, ...], Field(min_length=1)] = TASKS
    aux_tasks: tuple[AuxTaskParams, ...] = ()
    # A label counts the task's event within this many seconds from the row's moment (t0);
    # rows whose horizon passes the end of their split's data (train: test_start, test: the
    # last event) are censored: neither trained on nor judged. None: any time up to the
    # window's end, uncensored (taobao-mtl-v1's labels).
    label_horizon_s: PositiveInt | None = None
    ranking: RankingProtocolParams = RankingProtocolParams()

    @model_validator(mode="after")
    def _ordered(self) -> ProtocolParams:
        if not self.window_start < self.test_start < self.window_end:
            raise ValueError("need window_start < test_start < window_end")
        unknown = set(self.tasks) - set(KNOWN_TASKS)
        if unknown:
            raise ValueError(f"unknown tasks {sorted(unknown)}; known: {list(KNOWN_TASKS)}")
        names = [*self.tasks, *(a.name for a in self.aux_tasks)]
        if len(set(names)) < len(names):
            raise ValueError(f"task names must be unique across tasks and aux_tasks: {names}")
        return self


class RateBounds(Strict):
    min: Fraction
    max: Fraction


class ValidationParams(Strict):
    """Thresholds of the Great Expectations suites."""

    min_events: PositiveInt = 1000
    min_exposures: PositiveInt = 1000
    max_out_of_window_fraction: Fraction = 0.001
    # Share of events that repeat another exactly (every copy counts, as in Great Expectations'
    # uniqueness check); data.drop_duplicate_events drops them at ingest instead.
    max_duplicate_fraction: Fraction = 0.0
    positive_rate: dict[str, RateBounds] = Field(
        default_factory=lambda: {
            "cart": RateBounds(min=0.001, max=0.2),
            "fav": RateBounds(min=0.0005, max=0.2),
            "buy": RateBounds(min=0.001, max=0.2),
        }
    )
    report_dir: Path = Path("reports/validation")
    # Purchases with no view of the item by the user at or before them. Real Taobao logs have
    # many (47% in the sample: items reached outside the logged page views), so this is a cap.
    max_unexposed_buy_fraction: Fraction = 0.6
    # Population stability index vs the last accepted run's profile; above it is drift.
    max_drift_psi: Annotated[float, Field(gt=0.0)] = 0.2
    drift_top_categories: PositiveInt = 50
    # Event tables with more rows are not loaded whole: GX checks a reproducible sample that
    # keeps offending rows, and its row counts and verdicts come from DuckDB over every row.
    in_memory_rows: PositiveInt = 2_000_000
    sample_rows: PositiveInt = 200_000
    # The training set (about 150 columns, each with two row-level expectations, and GX copies
    # the frame for each) past this many rows: GX checks a sample of this many plus offending
    # rows, every verdict, count and label mean computed by DuckDB over every row.
    training_sample_rows: PositiveInt = 50_000


class SamplingParams(Strict):
    """Training over the entire space: at each exposure's moment, items the user did not touch
    then join the exposures as examples, labelled by what the user did with them within the
    label horizon (almost always nothing), so every task also learns to rank items the user
    did not choose and a `click` task has negatives. Counts per exposure; 0 turns a sampler off.
    """

    recent: Annotated[int, Field(ge=0)] = 4  # items the user viewed in the lookback before
    popularity: Annotated[int, Field(ge=0)] = 2  # items of anyone's views in the lookback before
    uniform: Annotated[int, Field(ge=0)] = 2  # any item seen before the moment, uniformly
    lookback_s: PositiveInt = 86_400
    seed: int = 7

    @property
    def per_exposure(self) -> int:
        return self.recent + self.popularity + self.uniform


class SynthParams(Strict):
    """`shopguide synth`: planted-structure events in the Taobao format (protocol synth-scale).

    Default rates are the taobao-mtl-v1 sample's exposure positive rates.
    """

    events: PositiveInt = 1_000_000
    users: PositiveInt = 20_000
    items: PositiveInt = 100_000
    categories: PositiveInt = 500
    latent_dim: PositiveInt = 8
    category_factor_dim: PositiveInt = 3  # 1: a category's task effects move together
    zipf_exponent: Annotated[float, Field(gt=0.0)] = 1.1
    positive_rate: dict[str, Fraction] = Field(
        default_factory=lambda: {"cart": 0.0085, "fav": 0.003, "buy": 0.0104}
    )
    signal_scale: Annotated[float, Field(ge=0.0)] = 1.0
    seed: int = 7


class FeatureParams(Strict):
    """Point-in-time behaviour features served through Feast."""

    repo: Path = Path("feature_repo")
    # Each entity's feature rows are emitted at multiples of its interval (dividing a day), so
    # a training row sees events up to the last multiple before its t0. 1: exact as of t0
    # (Taobao test AUC +0.02-0.04 over hourly). At 1 s a table holds about three rows per
    # event (10M events: 8 min for the data layer); coarser is faster: categories at 3600 s
    # cost 0.003-0.005 of cart AUC (docs/benchmarks.md). Serving matches this when events
    # reach the online store as they happen; with batch materialization only, set its cadence
    # here.
    # A view left out is exact (1 s).
    snapshot_interval_s: dict[FeatureEntity, PositiveInt] = Field(default_factory=dict)
    # Engine of the point-in-time training-set join: DuckDB ASOF JOINs on the feature views'
    # Parquet sources, pass by pass (bounded memory and spill), or Feast's get_historical_features,
    # which holds every exposure x entity row pair in memory (over 20 GB on the Taobao sample
    # at the 1 s grain).
    offline_join: Literal["duckdb_asof", "feast"] = "duckdb_asof"
    # The user's last events (item, category, behaviour, time) the `user_sequence` view keeps.
    sequence_length: Annotated[int, Field(ge=1, le=200)] = 20

    @model_validator(mode="after")
    def _intervals_divide_a_day(self) -> FeatureParams:
        for entity, seconds in self.snapshot_interval_s.items():
            if 86400 % seconds:
                raise ValueError(f"snapshot_interval_s.{entity}={seconds} must divide 86400")
        return self

    def interval(self, view: str) -> int:
        """The snapshot grain of `view` in seconds (1: exact as of every moment)."""
        return self.snapshot_interval_s.get(view, 1)  # type: ignore[call-overload]


ModelName = Literal[
    "single_task",
    "shared_bottom",
    "soft_sharing",
    "cross_stitch",
    "tensor_factorised",
    "mmoe",
    "ple",
    "esmm",
    "aitm",
]


class ModelParams(Strict):
    """Which model of the zoo (shopguide.model.zoo) and its architecture; each model reads
    only the fields its config declares."""

    name: ModelName = "mmoe"
    embedding_dim: PositiveInt = 16
    user_buckets: PositiveInt = 100_003
    item_buckets: PositiveInt = 200_003
    category_buckets: PositiveInt = 20_011
    num_experts: PositiveInt = 4  # MMoE experts; PLE shared experts per level
    task_experts: PositiveInt = 1  # PLE experts of each task per level
    levels: PositiveInt = 2  # PLE extraction levels
    # every expert, bottom and column
    expert_hidden: Annotated[tuple[PositiveInt, ...], Field(min_length=1)] = (128, 64)
    tower_hidden: tuple[PositiveInt, ...] = (32,)
    dropout: Fraction = 0.1
    wide: bool = True  # a linear term on the dense features in every head (Wide & Deep)
    # soft sharing: the penalty that ties each layer's task copies (l2 or l1 pull toward
    # their mean, or trace_norm: toward a low-rank family) and its weight
    sharing_penalty: Literal["l2", "l1", "trace_norm"] = "l2"
    sharing_weight: Annotated[float, Field(ge=0)] = 1e-4
    # Each category its own task: rows (categories hashed to them) of a per-category task
    # layer, a bias and a linear term on the dense features per task, added to the logit
    # beside the shared model (sparse gradients like the id tables). 0: none.
    category_task_buckets: Annotated[int, Field(ge=0)] = 0
    # tensor_factorised: shared bases of every task's layer weights (below the number of tasks
    # the tasks must share; at it they may be independent)
    factor_rank: PositiveInt = 2
    chain: dict[str, str] = Field(default_factory=lambda: {"buy": "cart"})  # ESMM child: parent
    calibration_weight: Annotated[float, Field(ge=0)] = 0.0  # AITM funnel calibrator
    # How every model reads the user's recent events (features.sequence_length of them): din,
    # target attention with the candidate item as the query (Zhou et al. 2018); mean, their
    # average embedding; none, not at all.
    sequence_encoder: Literal["din", "mean", "none"] = "din"
    # Which ids get embedding rows of their own (the others share one row). Ids seen a few
    # times each let a network memorise instead of rank: on the Taobao sample any id table,
    # even the categories', made the validation GAUC fall from the first epoch on, and none
    # ranked best (docs/benchmarks.md, taobao-rank-v1). Worth trying on a large log.
    id_embeddings: tuple[Literal["user", "item", "category"], ...] = ()


class TrainParams(Strict):
    seed: int = 7
    batch_size: PositiveInt = 1024
    learning_rate: LearningRate = 2e-3
    weight_decay: Annotated[float, Field(ge=0)] = 1e-5
    embedding_l2: Annotated[float, Field(ge=0)] = 1e-6
    max_epochs: PositiveInt = 20
    patience: PositiveInt = 3
    validation_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.15
    # How task losses make one update (shopguide.model.balance; README, "Models").
    loss_balancing: Literal[
        "fixed", "uncertainty", "gradnorm", "pcgrad", "dwa", "mgda_ub", "alternating"
    ] = "fixed"
    task_weights: dict[str, Annotated[float, Field(ge=0)]] = Field(default_factory=dict)
    gradnorm_alpha: Annotated[float, Field(ge=0)] = 1.5
    dwa_temperature: Annotated[float, Field(gt=0)] = 2.0  # dwa: lower, sharper weights
    # pcgrad: project the tasks' gradients at the shared layer's output (one extra backward
    # pass per task through its own layers) or on the shared parameters, as the paper (one
    # through the whole network, dense id tables)
    pcgrad_space: Literal["shared_output", "parameters"] = "shared_output"
    warmup_epochs: Annotated[int, Field(ge=0)] = 0  # epochs on warmup_task alone, then joint
    warmup_task: str = "cart"
    compile: bool = False  # torch.compile the task heads
    # Sparse id-table gradients with a lazy Adam (SparseAdam) for the tables, AdamW for the rest
    # (PCGrad on the parameters keeps dense tables); embedding_l2 then weighs the rows each
    # batch looks up.
    sparse_embeddings: bool = True
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: cuda when available (bf16 autocast)
    # The validation metric whose mean over tasks picks the epoch: gauc (within each user, as
    # a ranking for one user is judged), moment_auc (within each user at one moment: the
    # candidates one request ranks) or auc (pooled over the validation rows).
    selection: Literal["gauc", "moment_auc", "auc", "loss"] = "moment_auc"
    # Weight of a listwise loss (softmax over each user-moment's candidates, per task) beside
    # the pointwise one: it trains the ranking within one user at one moment only. 0: off.
    listwise_weight: Annotated[float, Field(ge=0)] = 1.0
    # The listwise loss's groups: one user at one moment (0), or one user's rows within
    # windows of this many seconds, several moments ranked together as GAUC ranks them. On the
    # Taobao sample a day raises GAUC but costs MRR and pooled AUC (docs/benchmarks.md).
    listwise_group_s: Annotated[int, Field(ge=0)] = 0
    # Also fit on the train split's taobao-rank-v1 queries (protocol rule 5: training queries
    # for a learned ranker), each labelled for its own task only.
    ranking_queries: bool = True
    # How `train` reads the training set: stream (Parquet row groups through a shuffle buffer
    # of `shuffle_buffer_rows` rows; memory bounded by the buffer, whatever the data's size)
    # or memory (the whole table as tensors). A set that fits in the buffer is read once and
    # trained on as in memory.
    loader: Literal["stream", "memory"] = "stream"
    shuffle_buffer_rows: PositiveInt = 1_048_576
    # A checkpoint every this many steps too (0: after every epoch only), so that a run
    # killed in a long epoch resumes mid-epoch.
    checkpoint_every_steps: Annotated[int, Field(ge=0)] = 0

    @model_validator(mode="after")
    def _joint_epochs(self) -> TrainParams:
        if self.warmup_epochs >= self.max_epochs:
            raise ValueError(
                f"warmup_epochs ({self.warmup_epochs}) must be below max_epochs "
                f"({self.max_epochs}): the model kept is the best joint-training epoch"
            )
        return self


TransferStrategy = Literal["frozen", "l2sp", "adversarial", "coldstart", "mmd", "coral", "meta"]


class FinetuneParams(Strict):
    """Transfer to new categories (protocol taobao-transfer-v1)."""

    new_category_modulo: PositiveInt = 3
    new_category_remainder: int = 0
    # When set, exactly these categories are new (the fine-tuning pipeline's input) and the
    # modulo rule of the protocol is not used.
    new_category_ids: tuple[int, ...] = ()
    # What `shopguide finetune` adapts: the model the train step just made (the training DAG,
    # as in the KFP training pipeline) or the registry's champion (the new-category branch,
    # as in the KFP fine-tuning pipeline; the pre-trained model while there is no champion).
    base: Literal["pretrained", "champion"] = "pretrained"
    learning_rate: LearningRate = 1e-3
    max_epochs: PositiveInt = 10
    patience: PositiveInt = 2
    # Training rows fine-tuning keeps of the new and of the old categories (each a sample of
    # users where there are more, read a row group at a time): it learns from the new ones;
    # replay, the forgetting check, alignment and meta-learning draw from the old ones. They
    # bound the step's memory (about 5 KB a row with its copies) whatever the data's size.
    new_rows: PositiveInt = 500_000
    old_rows: PositiveInt = 500_000
    # How to adapt (shopguide.transfer): frozen shared layers, L2-SP, adversarial (gradient
    # reversal), MMD or CORAL alignment, a meta-learned (Reptile) start, cold-start rows, or
    # `auto`: each of `auto_strategies`, best on validation.
    strategy: TransferStrategy | Literal["auto"] = "l2sp"
    auto_strategies: Annotated[tuple[TransferStrategy, ...], Field(min_length=1)] = (
        "frozen",
        "l2sp",
        "adversarial",
        "mmd",
        "coral",
        "meta",
        "coldstart",
    )
    full_learning_rate: LearningRate = 3e-4  # l2sp / adversarial: every layer
    l2sp_lambda: Annotated[float, Field(ge=0)] = 0.01  # pull toward the pre-trained weights
    adversarial_weight: Annotated[float, Field(ge=0)] = 0.1  # domain loss through the GRL
    # Weights of the distance between the domains' shared representations: mmd (MMD^2 under
    # Gaussian kernels, about 0.01-0.03 on Taobao's old and new categories at the start) and
    # coral (covariance distance over 4 d^2, about 1e-4 there): scaled alike.
    mmd_weight: Annotated[float, Field(ge=0)] = 1.0
    coral_weight: Annotated[float, Field(ge=0)] = 100.0
    # meta: Reptile over the old categories before fine-tuning: iterations (one category
    # each), Adam steps per category and their learning rate, and how far each iteration
    # moves the weights toward where its steps ended
    meta_iterations: PositiveInt = 100
    meta_inner_steps: PositiveInt = 5
    meta_inner_lr: LearningRate = 1e-3
    meta_step_size: Annotated[float, Field(gt=0, le=1)] = 0.1
    # Old categories' train exposures replayed per new-category exposure while adapting.
    replay_ratio: Annotated[float, Field(ge=0)] = 2.0  # as params.yaml: what keeps forgetting low
    # Parameter isolation (shopguide.model.routed): the fine-tuned copy scores only the new
    # categories, every other category keeps the base model's scores exactly (no forgetting,
    # no gain either); the saved model holds both. False: one model, adapted in place.
    isolate: bool = True


class EvaluationParams(Strict):
    """The evaluation report: bootstrap intervals, calibration bins, category groups."""

    bootstrap_samples: Annotated[int, Field(ge=0)] = 500  # 0: point estimates only
    confidence: Annotated[float, Field(gt=0, lt=1)] = 0.95
    seed: int = 7
    calibration_bins: Annotated[int, Field(ge=2)] = 10  # equal-mass bins
    # Category groups by popularity in the training split: "head" categories hold the first
    # share of training exposures (most exposed first), "torso" reach the second, "tail" is
    # the rest, including categories never seen in training.
    category_group_shares: tuple[Fraction, Fraction] = (0.5, 0.8)

    @model_validator(mode="after")
    def _increasing(self) -> EvaluationParams:
        head, torso = self.category_group_shares
        if not 0 < head < torso < 1:
            raise ValueError("category_group_shares must be increasing, strictly within (0, 1)")
        return self


class InfraCheckParams(Strict):
    """The gate's serving check: the candidate behind a real `shopguide serve` on loopback."""

    enabled: bool = True
    requests: PositiveInt = 40  # sequential requests, one client
    candidates: PositiveInt = 100  # candidates per request, from test exposures
    max_abs_diff: Annotated[float, Field(gt=0)] = 1e-5  # served vs offline probabilities
    p99_latency_ms: Annotated[float, Field(gt=0)] = 100.0
    startup_timeout_s: Annotated[float, Field(gt=0)] = 120.0


class GateParams(Strict):
    auc_floor: dict[str, Fraction] = Field(
        default_factory=lambda: {"cart": 0.55, "fav": 0.55, "buy": 0.55}
    )
    # Tolerance: refuse when the candidate's AUC is below the champion's by more than this,
    # overall or in a slice, with at least `regression_confidence` bootstrap probability.
    max_auc_regression: Fraction = 0.01
    # No forgetting: refuse when an old-category task's test AUC is below the champion's on the
    # same old-category test exposures by more than this (point estimate, no bootstrap).
    max_old_category_drop: Fraction = 0.01
    regression_confidence: Annotated[float, Field(ge=0.5, lt=1)] = 0.95
    bootstrap_samples: PositiveInt = 1000  # paired: both models on the same resamples
    seed: int = 7
    min_slice_positives: Annotated[int, Field(ge=1)] = 20  # smaller slices are not judged
    # Ranking rules. The lower end of each named task's GAUC interval on the test exposures
    # must be above its floor (some of protocol.tasks).
    gauc_floor: dict[str, Fraction] = Field(default_factory=dict)
    # For every task with taobao-rank-v1 test queries, the lower end of the served score's
    # within-query AUC interval (over users) must be above this; None: not judged.
    ranking_auc_floor: Fraction | None = 0.5
    # Refuse when the candidate's MRR or within-query AUC (taobao-rank-v1 queries) is below
    # the champion's by more than this, with `regression_confidence` probability over users
    # resampled in a paired bootstrap.
    max_ranking_regression: Fraction = 0.02
    # `shopguide dataset gate`: the AUC floor of a declared dataset's binary tasks, by name
    # (0.5 for a task not named); the tasks are the dataset schema's, not protocol.tasks.
    declared_auc_floor: dict[str, Fraction] = Field(default_factory=dict)
    # Expert collapse (MMoE, PLE): refuse when a gate's entropy on the test rows (1: even over
    # its experts, 0: one expert takes all) is below this; None: reported, not judged.
    min_gate_entropy: Fraction | None = None
    infra: InfraCheckParams = InfraCheckParams()


class RegistryParams(Strict):
    path: Path = Path("registry")


class ServingParams(Strict):
    model_name: str = "shopguide"
    http_port: Annotated[int, Field(ge=0, le=65535)] = 8080
    max_candidates: PositiveInt = 1000
    # score = sum(weight[task] * p(task)); every task named must be in protocol.tasks (checked
    # on load) and predicted by the served model (checked at its start).
    ranking_weights: dict[str, float] = Field(
        default_factory=lambda: {"cart": 1.0, "fav": 0.5, "buy": 2.0}
    )
    host: str = "0.0.0.0"  # `shopguide serve --host 127.0.0.1` for loopback only
    max_request_bytes: PositiveInt = 1_000_000  # larger bodies get 413 before any parsing
    reload_interval_s: Annotated[float, Field(ge=0)] = 5.0  # champion poll; 0: never reload
    # sqlite: direct indexed reads of Feast's SQLite online store; feast: Feast's online_read
    # (any online store); auto: sqlite when the repo's online store is SQLite.
    online_reader: Literal["auto", "sqlite", "feast"] = "auto"


class DeployParams(Strict):
    """Values rendered into the KServe InferenceService on promotion."""

    namespace: str = "shopguide"
    predictor_image: str = "ghcr.io/shopguide/shopguide-predictor:0.1.0"
    # The registry's versions on the data volume: promotion needs no copy to serve a version.
    storage_uri_prefix: str = "pvc://shopguide-data/registry/versions"
    # Storage every pipeline step and the predictor mount: raw data, Feast repo, registry.
    data_pvc: str = "shopguide-data"
    data_mount: str = "/mnt/shopguide"
    min_replicas: Annotated[int, Field(ge=0)] = 1
    max_replicas: PositiveInt = 3
    # Percent of traffic the new version gets while KServe keeps the previous one serving the
    # rest; None rolls out fully.
    canary_traffic_percent: Annotated[int, Field(ge=0, le=100)] | None = None
    output: Path = Path("k8s/rendered/inferenceservice.yaml")


class Toleration(Strict):
    key: str
    operator: Literal["Equal", "Exists"] = "Exists"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None


class KubeflowParams(Strict):
    """The cluster path: KFP endpoint, step resources, GPU scheduling, retraining schedule.

    Resources and GPU settings are compiled into the pipeline YAML, so recompile after a change.
    """

    host: str = "http://ml-pipeline.kubeflow.svc.cluster.local:8888"
    namespace: str = "shopguide"
    experiment: str = "shopguide"
    cpu_request: str = "1"
    memory_request: str = "4Gi"
    gpu_cpu_request: str = "4"
    gpu_memory_request: str = "16Gi"
    accelerator_type: str = "nvidia.com/gpu"
    accelerator_limit: PositiveInt = 1  # GPUs of the finetune step
    # GPUs of the train step, on one node: more than one starts `torchrun`, one process each.
    train_accelerator_limit: PositiveInt = 1
    gpu_node_selector: dict[str, str] = Field(
        default_factory=lambda: {"nvidia.com/gpu.present": "true"}
    )
    gpu_tolerations: tuple[Toleration, ...] = (
        Toleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule"),
    )
    retries: Annotated[int, Field(ge=0)] = 2
    # KFP cron expressions have a leading seconds field: 03:00 every Monday.
    schedule_cron: str = "0 0 3 * * 1"


class Params(Strict):
    data: DataParams = DataParams()
    protocol: ProtocolParams = ProtocolParams()
    validation: ValidationParams = ValidationParams()
    sampling: SamplingParams = SamplingParams()
    synth: SynthParams = SynthParams()
    features: FeatureParams = FeatureParams()
    model: ModelParams = ModelParams()
    train: TrainParams = TrainParams()
    finetune: FinetuneParams = FinetuneParams()
    evaluation: EvaluationParams = EvaluationParams()
    gate: GateParams = GateParams()
    registry: RegistryParams = RegistryParams()
    serving: ServingParams = ServingParams()
    deploy: DeployParams = DeployParams()
    kubeflow: KubeflowParams = KubeflowParams()

    @model_validator(mode="after")
    def _tasks_covered(self) -> Params:
        """Per-task settings name exactly the protocol's tasks (ranking weights: some of them),
        so switching `protocol.tasks` fails here, naming every setting to change, instead of
        in the gate after a whole run."""
        tasks = set(self.protocol.tasks)
        problems = []
        for name, mapping, complete in (
            ("gate.auc_floor", self.gate.auc_floor, True),
            ("validation.positive_rate", self.validation.positive_rate, True),
            ("serving.ranking_weights", self.serving.ranking_weights, False),
            ("gate.gauc_floor", self.gate.gauc_floor, False),
        ):
            missing, extra = tasks - set(mapping), set(mapping) - tasks
            if complete and missing:
                problems.append(f"{name} has no entry for tasks {sorted(missing)}")
            if extra:
                problems.append(f"{name} names tasks {sorted(extra)} not in protocol.tasks")
        if problems:
            raise ValueError(f"{'; '.join(problems)} (protocol.tasks: {list(self.protocol.tasks)})")
        if self.gate.infra.candidates > self.serving.max_candidates:
            raise ValueError(
                f"gate.infra.candidates ({self.gate.infra.candidates}) is over "
                f"serving.max_candidates ({self.serving.max_candidates})"
            )
        return self


def format_errors(err: ValidationError) -> str:
    """One line per problem: where, what, and the value given, cut short (not for a section,
    whose value is the whole mapping: a check of several fields names them itself)."""
    lines = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "<root>"
        value = e.get("input")
        shown = e["type"] != "missing" and not isinstance(value, dict)
        lines.append(f"  {where}: {e['msg']}" + (f" (got {reprlib.repr(value)})" if shown else ""))
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
    except (OSError, UnicodeDecodeError) as exc:  # a directory, binary, unreadable
        raise ShopguideError(f"{path}: cannot read the parameters file: {exc}") from exc
    if not isinstance(raw, dict):
        raise ShopguideError(f"{path}: expected a mapping at the top level")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        raise ShopguideError(f"{path}: invalid parameters\n{format_errors(exc)}") from exc


def params_from_json(text: str) -> Params:
    """Parse parameters passed as JSON (KFP components receive them this way)."""
    try:
        return Params.model_validate_json(text)
    except ValidationError as exc:
        raise ShopguideError(f"invalid parameters\n{format_errors(exc)}") from exc
