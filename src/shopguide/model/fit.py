"""The training engine shared by `train`, `finetune` and the benchmarks: whole-table tensors
batched by index, per-task losses combined by a balancer, optional single-task warm-up, bf16
autocast on GPU, optional `torch.compile`, a checkpoint every epoch that a restarted run
resumes from, early stopping on mean validation AUC, and data parallelism under `torchrun`.

Id tables get sparse gradients and a lazy Adam (`shopguide.model.optim`) unless PCGrad on the
parameters needs them dense; heads may add auxiliary tasks of other types
(`shopguide.model.tasks`).

Every epoch reseeds from (seed, epoch), so a run resumed from a checkpoint reproduces the
uninterrupted run exactly on CPU (on CUDA up to its non-deterministic embedding backward).
Data parallelism all-reduces the gradients by hand after the balancer has set them (DDP's
hooks cannot see PCGrad's and GradNorm's per-task gradients; so under `torchrun` those two
balance each process's own batch, and the balanced gradients are averaged)."""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F

from shopguide.config import TrainParams
from shopguide.errors import ShopguideError
from shopguide.io import atomic_path
from shopguide.logs import progress
from shopguide.metrics import aux_task_metrics, mean_metric, task_metrics
from shopguide.model.balance import make_balancer
from shopguide.model.base import MultiTaskModel
from shopguide.model.optim import EngineOptimizer, row_sparse
from shopguide.model.stream import TensorStream, memory_batches
from shopguide.model.tasks import aux_predictions, listwise_losses, task_losses
from shopguide.model.tensors import Tensors

log = logging.getLogger(__name__)
CHECKPOINT = "last.pt"
# Rows held whole in tensors, or a training set streamed from Parquet (`model.stream`).
Data = Tensors | TensorStream


@dataclass(frozen=True)
class FitSettings:
    learning_rate: float
    weight_decay: float
    embedding_l2: float
    batch_size: int
    max_epochs: int
    patience: int
    seed: int
    loss_balancing: str = "fixed"
    task_weights: tuple[float, ...] = ()  # empty: every task weighs 1
    gradnorm_alpha: float = 1.5
    dwa_temperature: float = 2.0
    pcgrad_space: str = "shared_output"
    warmup_epochs: int = 0  # epochs on `warmup_task` alone before joint training
    warmup_task: int = 0  # index into the model's tasks
    compile: bool = False
    device: str = "cpu"
    # sparse id-table gradients + SparseAdam (not with PCGrad on the parameters)
    sparse_embeddings: bool = False
    # The validation metric that picks the epoch (mean over tasks): auc, pooled over the rows,
    # gauc, within each user (what a ranking for one user is judged by), or moment_auc, within
    # each user at one moment (the candidates of one request).
    selection: str = "auc"
    # Weight of the listwise loss within each group (one user at one moment) beside the
    # pointwise one; batches then hold whole groups. 0: pointwise only.
    listwise_weight: float = 0.0
    # A checkpoint every this many steps as well as after every epoch (0: epochs only), so a
    # run killed in a long epoch resumes mid-epoch.
    checkpoint_every_steps: int = 0


@dataclass
class FitResult:
    best_epoch: int
    best_metrics: dict
    history: list[dict] = field(default_factory=list)
    resumed_from: int | None = None

    @property
    def samples(self) -> int:
        """Training rows processed over every epoch run (the compute a run took, in rows)."""
        return sum(int(row.get("samples", 0)) for row in self.history)


def resolve_device(device: str) -> str:
    """`train.device` as torch names it: `auto` is `cuda` when a GPU is visible."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ShopguideError(
            "train.device is cuda but torch sees no GPU (a CPU build of torch, or no device); "
            "set train.device: auto or cpu, or install the CUDA build (README)"
        )
    return device


def init_distributed(device: str) -> None:
    """Join the process group `torchrun` describes in the environment: NCCL when training on
    GPUs, each process on the GPU of its `LOCAL_RANK` (else every process of a node would
    share GPU 0), gloo on CPU (also on a GPU machine told `train.device: cpu`)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return
    if device == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if device == "cuda" else "gloo")


def settings_from_params(train: TrainParams, tasks: tuple[str, ...]) -> FitSettings:
    unknown = set(train.task_weights) - set(tasks)
    if unknown or (train.warmup_epochs and train.warmup_task not in tasks):
        raise ShopguideError(
            f"train.task_weights / train.warmup_task name tasks {sorted(unknown)} "
            f"or {train.warmup_task!r} that are not among {list(tasks)}"
        )
    return FitSettings(
        learning_rate=train.learning_rate,
        weight_decay=train.weight_decay,
        embedding_l2=train.embedding_l2,
        batch_size=train.batch_size,
        max_epochs=train.max_epochs,
        patience=train.patience,
        seed=train.seed,
        loss_balancing=train.loss_balancing,
        task_weights=tuple(train.task_weights.get(t, 1.0) for t in tasks),
        gradnorm_alpha=train.gradnorm_alpha,
        dwa_temperature=train.dwa_temperature,
        pcgrad_space=train.pcgrad_space,
        warmup_epochs=train.warmup_epochs,
        warmup_task=tasks.index(train.warmup_task) if train.warmup_epochs else 0,
        compile=train.compile,
        device=resolve_device(train.device),
        sparse_embeddings=train.sparse_embeddings,
        selection=train.selection,
        listwise_weight=train.listwise_weight,
        checkpoint_every_steps=train.checkpoint_every_steps,
    )


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside `torchrun`."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@torch.no_grad()
def head_outputs(model: MultiTaskModel, data: Data, batch_size: int = 16384) -> torch.Tensor:
    """Every head's raw outputs, (rows, sum of head widths), on the CPU."""
    model.eval()
    device = next(model.parameters()).device
    chunks = data.chunks() if isinstance(data, TensorStream) else [data]
    out = [
        model.outputs(*(t.to(device) for t in chunk.rows(slice(i, i + batch_size)).inputs()))
        .float()
        .cpu()
        for chunk in chunks
        for i in range(0, len(chunk), batch_size)
    ]
    return torch.cat(out) if out else torch.zeros((0, sum(model.config.head_widths())))


def targets(data: Data) -> Tensors:
    """Tensors whose labels, user and group are every row's (a stream's, gathered in one pass:
    tens of bytes a row)."""
    return data.targets() if isinstance(data, TensorStream) else data


def probabilities(outputs: torch.Tensor, tasks: int) -> np.ndarray:
    """The binary tasks' probabilities, (rows, tasks), from `head_outputs`."""
    return torch.sigmoid(outputs[:, :tasks]).numpy()


def predict(model: MultiTaskModel, data: Data, batch_size: int = 16384) -> np.ndarray:
    """Binary task probabilities, (rows, tasks)."""
    return probabilities(head_outputs(model, data, batch_size), len(model.config.tasks))


def predict_aux(model: MultiTaskModel, data: Data, batch_size: int = 16384) -> dict:
    """Auxiliary task predictions by name (see `shopguide.model.tasks.aux_predictions`)."""
    config = model.config
    outputs = head_outputs(model, data, batch_size)
    return aux_predictions(outputs, len(config.tasks), config.aux_tasks)


def aux_metrics(model: MultiTaskModel, data: Data) -> dict:
    """{name: metrics} of every auxiliary task on `data`, whose labels hold every head."""
    config = model.config
    if not config.aux_tasks:
        return {}
    labels = targets(data).labels.numpy()
    predictions = predict_aux(model, data)
    return {
        task.name: aux_task_metrics(
            task.type, labels[:, len(config.tasks) + j], predictions[task.name]
        )
        for j, task in enumerate(config.aux_tasks)
    }


def validation_loss(
    model: MultiTaskModel, outputs: torch.Tensor, labels: torch.Tensor, weights: list[float]
) -> float:
    """The weighted sum of every head's mean loss, from the model's `head_outputs` on rows with
    these `labels` (the training objective's task terms, without regularisers)."""
    losses = task_losses(outputs, labels, len(model.config.tasks), model.config.aux_tasks)
    return float((losses * torch.tensor(weights)).sum())


def _fingerprint(model: MultiTaskModel, train: Data, settings: FitSettings) -> str:
    """What a checkpoint must match to be resumed: same model, settings and data shape (and a
    stream's parts and buffer, which set the order of its batches)."""
    layout = train.describe() if isinstance(train, TensorStream) else None
    chosen = asdict(settings)
    del chosen["checkpoint_every_steps"]  # how often to save is no part of what is trained
    key = json.dumps(
        [model.config.model_dump(mode="json"), chosen, len(train), world()[1], layout],
        sort_keys=True,
    )
    return hashlib.sha256(key.encode()).hexdigest()


def _all_reduce_grads(params: list[nn.Parameter], size: int) -> None:
    """Average gradients over processes; sparse ones are averaged dense and handed back sparse
    (row-sparse, as SparseAdam expects). A parameter without a gradient is left without one,
    as in a single process (so AdamW neither decays nor moves it): every process runs the same
    graph, so they agree on which those are."""
    params = [p for p in params if p.grad is not None]
    sparse = [p.grad.is_sparse for p in params]
    grads = [p.grad.to_dense() if s else p.grad for p, s in zip(params, sparse, strict=True)]
    flat = torch.cat([g.flatten() for g in grads])
    dist.all_reduce(flat)
    flat /= size
    offset = 0
    for p, s in zip(params, sparse, strict=True):
        grad = flat[offset : offset + p.numel()].view_as(p)
        p.grad = row_sparse(grad) if s else grad.clone()
        offset += p.numel()


@dataclass
class _EpochRun:
    """An epoch's progress: what a mid-epoch checkpoint keeps to go on from where it was."""

    total: torch.Tensor  # summed task losses
    batches: int
    seen: int
    rng: torch.Tensor | None = None  # the dropout generator's state at the checkpoint


# An extra objective term: (model, labelled batch, its representation) -> scalar loss added to
# the regularisers (fine-tuning's L2-SP pull and adversarial domain loss use it).
ExtraLoss = Callable[[MultiTaskModel, Tensors, torch.Tensor], torch.Tensor]


def _read_checkpoint(path: Path, device: torch.device) -> dict:
    """A checkpoint this module wrote; a truncated or foreign file is an error naming it."""
    try:
        saved = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # torch raises RuntimeError, pickle and zip errors alike
        raise ShopguideError(
            f"{path}: not a readable checkpoint (truncated or not written by shopguide?): "
            f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}; delete it to train "
            "from the start"
        ) from exc
    if not isinstance(saved, dict) or "fingerprint" not in saved:
        raise ShopguideError(
            f"{path}: not a shopguide checkpoint; delete it to train from the start"
        )
    return saved


def fit(
    model: MultiTaskModel,
    train: Data,
    valid: Data,
    settings: FitSettings,
    trainable: list[nn.Parameter] | None = None,
    description: str = "train",
    checkpoint_dir: Path | None = None,
    extra_loss: ExtraLoss | None = None,
) -> FitResult:
    """Train in place; on return the model holds the weights of its best joint-training epoch
    (warm-up epochs are a stage, not a candidate, and do not count toward patience).
    `trainable` may include parameters outside the model that `extra_loss` uses; the model's
    other parameters are frozen for the run, so no gradient is computed or kept for them."""
    params = trainable if trainable is not None else list(model.parameters())
    own = {id(p) for p in params}
    frozen = [p for p in model.parameters() if p.requires_grad and id(p) not in own]
    for p in frozen:
        p.requires_grad_(False)
    try:
        return _fit(model, train, valid, settings, params, description, checkpoint_dir, extra_loss)
    finally:
        for p in frozen:
            p.requires_grad_(True)


def _fit(
    model: MultiTaskModel,
    train: Data,
    valid: Data,
    settings: FitSettings,
    params: list[nn.Parameter],
    description: str,
    checkpoint_dir: Path | None,
    extra_loss: ExtraLoss | None,
) -> FitResult:
    rank, size = world()
    device = torch.device(settings.device)
    torch.manual_seed(settings.seed)
    model.to(device)
    tasks, heads_count = model.config.tasks, len(model.config.head_widths())
    valid_targets = targets(valid)
    first = train.head(1) if isinstance(train, TensorStream) else train
    for part, data in (("training", first), ("validation", valid_targets)):
        if data.labels.shape[1] != heads_count:
            raise ShopguideError(
                f"{description}: the {part} data has {data.labels.shape[1]} label columns, "
                f"the model has tasks {list(model.config.head_names())}"
            )
    weights = list(settings.task_weights) or [1.0] * heads_count
    grouped = settings.listwise_weight > 0
    balancer = make_balancer(
        settings.loss_balancing,
        weights,
        settings.gradnorm_alpha,
        settings.dwa_temperature,
        settings.pcgrad_space,
    ).to(device)
    embeddings = [p for p in model.embedding_parameters() if p.requires_grad]
    # PCGrad on the parameters flattens every task's gradient into one dense vector, so it
    # keeps dense tables.
    sparse = settings.sparse_embeddings and not (
        settings.loss_balancing == "pcgrad" and settings.pcgrad_space == "parameters"
    )
    model.set_sparse_embeddings(sparse)
    optimizer = EngineOptimizer(
        [*params, *balancer.parameters()],
        [p for p in embeddings if sparse and any(p is q for q in params)],
        settings.learning_rate,
        settings.weight_decay,
    )
    heads = torch.compile(model.heads) if settings.compile else model.heads
    if size > 1:
        for p in [*model.parameters(), *balancer.parameters()]:
            dist.broadcast(p.data, src=0)
    if device.type == "cuda" and isinstance(train, Tensors):
        train = Tensors(
            *(t.pin_memory().to(device, non_blocking=True) for t in vars(train).values())
        )

    best = FitResult(best_epoch=-1, best_metrics={})
    best_score, best_state, stale, start = -float("inf"), None, 0, 0
    path = checkpoint_dir / CHECKPOINT if checkpoint_dir is not None else None
    fingerprint = _fingerprint(model, train, settings)
    resumed: _EpochRun | None = None  # the epoch a mid-epoch checkpoint was taken in
    if path is not None and path.is_file():
        saved = _read_checkpoint(path, device)
        if saved["fingerprint"] == fingerprint:
            model.load_state_dict(saved["model"])
            balancer.load_state_dict(saved["balancer"])
            optimizer.load_state_dict(saved["optimizer"])
            best_state, best_score, stale = saved["best_state"], saved["best_score"], saved["stale"]
            state = json.loads(saved["state"])
            best.best_epoch, best.best_metrics, best.history = (
                state["best_epoch"],
                state["best_metrics"],
                state["history"],
            )
            if state.get("step") is None:
                start = best.resumed_from = saved["epoch"] + 1
                log.info("%s: resumed from the checkpoint of epoch %d", description, saved["epoch"])
            else:
                start = best.resumed_from = saved["epoch"]
                resumed = _EpochRun(
                    torch.tensor(state["total"], dtype=torch.float64, device=device),
                    state["step"],
                    state["seen"],
                    saved["rng"],
                )
                log.info(
                    "%s: resumed in epoch %d after step %d",
                    description,
                    saved["epoch"],
                    state["step"],
                )
        else:
            log.warning("%s: ignoring %s (another model, data or settings)", description, path)

    def save(epoch: int, run: _EpochRun | None) -> None:
        """A checkpoint after `epoch`, or within it after `run.batches` steps."""
        if path is None or rank != 0:
            return
        state = {
            "best_epoch": best.best_epoch,
            "best_metrics": best.best_metrics,
            "history": best.history,
            "step": None if run is None else run.batches,
            "total": None if run is None else float(run.total),
            "seen": None if run is None else run.seen,
        }
        with atomic_path(path) as tmp:
            torch.save(
                {
                    "fingerprint": fingerprint,
                    "epoch": epoch,
                    "model": model.state_dict(),
                    "balancer": balancer.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "best_state": best_state,
                    "best_score": best_score,
                    "stale": stale,
                    "state": json.dumps(state),
                    "rng": torch.get_rng_state() if run is not None else torch.zeros(0),
                },
                tmp,
            )

    with progress() as bar:
        job = bar.add_task(description, total=settings.max_epochs, completed=start)
        for epoch in range(start, settings.max_epochs):
            if stale >= settings.patience:
                break
            # each process its own dropout masks; process 0 those of a single-process run
            torch.manual_seed(settings.seed * 100_003 + epoch + rank * 1_000_003)
            model.train()
            generator = torch.Generator().manual_seed(settings.seed * 100_003 + epoch)
            if isinstance(train, TensorStream):
                epoch_batches = train.batches(
                    generator, settings.batch_size, rank, size, grouped=grouped
                )
            else:
                epoch_batches = memory_batches(
                    train, generator, settings.batch_size, rank, size, grouped=grouped
                )
            mask = torch.ones(heads_count, device=device)
            if epoch < settings.warmup_epochs:
                mask = F.one_hot(torch.tensor(settings.warmup_task), heads_count).float().to(device)
            # summed on the device: a host read per step would stall the GPU every batch
            run = _EpochRun(torch.zeros((), dtype=torch.float64, device=device), 0, 0)
            started = time.perf_counter()
            if resumed is not None:  # replay the epoch's order up to where the run stopped
                run, resumed = resumed, None
                epoch_batches = itertools.islice(epoch_batches, run.batches, None)
                torch.set_rng_state(run.rng)
            for batch, rows in epoch_batches:
                batch = batch.to(device)
                with torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda"):
                    representation = model.encode(*batch.inputs())
                    if not representation.requires_grad:  # frozen encoders; GradNorm needs it
                        representation.requires_grad_()
                    shared = model.shared_output(representation)
                    if not shared.requires_grad:  # frozen shared layers
                        shared.requires_grad_()
                    logits = heads(representation, shared).float()
                losses = task_losses(
                    logits, batch.labels, len(tasks), model.config.aux_tasks, batch.pointwise
                )
                if grouped:
                    listwise = listwise_losses(
                        logits[:, : len(tasks)], batch.labels[:, : len(tasks)], batch.group
                    )
                    losses = torch.cat(
                        [
                            losses[: len(tasks)] + settings.listwise_weight * listwise,
                            losses[len(tasks) :],
                        ]
                    )
                extra = model.penalty(logits)
                if extra_loss is not None:
                    extra = extra + extra_loss(model, batch, representation)
                if settings.embedding_l2 and embeddings:
                    # summed over this process's rows: times `size`, so that averaging the
                    # processes' gradients gives the single-process penalty of the whole batch
                    extra = extra + settings.embedding_l2 * size * model.embedding_square_sum(
                        representation
                    )
                optimizer.zero_grad(set_to_none=True)
                if epoch < settings.warmup_epochs:
                    ((mask * losses).sum() + extra).backward()
                else:
                    balancer.backward(losses, extra, shared, params)
                if size > 1:
                    _all_reduce_grads([*params, *balancer.parameters()], size)
                optimizer.step()
                balancer.after_step()
                run.total += losses.detach().sum()
                run.batches += 1
                run.seen += rows  # every process's rows
                every = settings.checkpoint_every_steps
                if every and run.batches % every == 0:
                    save(epoch, run)
            balancer.after_epoch()
            seconds = time.perf_counter() - started  # the steps (a resumed epoch's remaining)
            outputs = head_outputs(model, valid)
            metrics = task_metrics(
                valid_targets.labels[:, : len(tasks)].numpy(),
                probabilities(outputs, len(tasks)),
                tasks,
                users=valid_targets.user.numpy() if settings.selection == "gauc" else None,
                moments=valid_targets.group.numpy() if settings.selection == "moment_auc" else None,
            )
            score = (
                -validation_loss(model, outputs, valid_targets.labels, weights)
                if settings.selection == "loss"
                else mean_metric(metrics, settings.selection)
            )
            row = {
                "epoch": epoch,
                "train_loss": float(run.total) / max(run.batches, 1),
                "samples": run.seen,
                "seconds": round(seconds, 3),
                f"val_mean_{settings.selection}": score,
            }
            row |= {
                f"val_{t}_{m}": metrics[t].get(m)
                for t in tasks
                for m in dict.fromkeys(("auc", settings.selection))
            }
            row |= {
                f"weight_{t}": w
                for t, w in zip(model.config.head_names(), balancer.current_weights(), strict=True)
            }
            best.history.append(row)
            log.info(
                "%s epoch %d: loss %.4f, validation %s %.4f",
                description,
                epoch,
                row["train_loss"],
                "-loss" if settings.selection == "loss" else f"mean {settings.selection}",
                score,
            )
            bar.advance(job)
            joint = epoch >= settings.warmup_epochs
            if joint and score > best_score:
                best_score, stale = score, 0
                best_state = copy.deepcopy(model.state_dict())
                best.best_epoch, best.best_metrics = epoch, metrics
            elif joint:
                stale += 1
            save(epoch, None)
            if stale >= settings.patience:
                log.info("early stop after epoch %d (best %d)", epoch, best.best_epoch)
    if best_state is None:
        raise ShopguideError(f"{description}: no epoch was trained (max_epochs 0?)")
    model.load_state_dict(best_state)
    model.set_sparse_embeddings(False)
    model.to("cpu").eval()
    return best
