"""KServe predictor: serves the registry's champion (or one model directory) with features from
the Feast online store, scoring every candidate of a request in one forward pass.

* v1 `predict`: a ranking per instance; v2 `infer` (Open Inference Protocol): one row per
  (user, item) pair. Both carry the model version that scored them.
* Requests that queue while a batch is being scored are scored together in the next one (no
  waiting: a lone request is scored at once), which amortises the per-batch costs under load.
* With a registry, a newly promoted champion is swapped in once it is loaded and has scored a
  warm-up row (`shopguide.serving.champion_swap`).
"""

from __future__ import annotations

import asyncio
import logging
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import kserve
import numpy as np
import torch
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

from shopguide.config import ServingParams
from shopguide.errors import ShopguideError
from shopguide.features import open_store
from shopguide.model.base import MultiTaskModel
from shopguide.model.routed import Routed
from shopguide.model.store import load_model
from shopguide.registry import champion, version_name
from shopguide.serving import metrics
from shopguide.serving.champion_swap import ChampionSwap
from shopguide.serving.features import OnlineFeatureReader, Reader, make_reader
from shopguide.serving.schema import (
    MAX_V2_TENSORS,
    Batch,
    parse_infer_request,
    parse_request,
    v1_batch,
)

log = logging.getLogger(__name__)


class RejectedRequest(InvalidInput):
    """A request the predictor refuses (400); its reason names the field, briefly
    (shopguide.serving.schema), and it has its own handler (shopguide.serving.server)."""


def resolve_model_dir(model_dir: Path | None, registry: Path | None) -> tuple[Path, str]:
    """An explicit directory (KServe's /mnt/models) wins; otherwise the registry's champion."""
    if model_dir is not None:
        return Path(model_dir), version_name(Path(model_dir))
    current = champion(registry) if registry is not None else None
    if current is None:
        raise ShopguideError(f"{registry}: the registry has no champion; run promote first")
    return current.path, current.name


def compiled(net: MultiTaskModel) -> tuple[torch.nn.Module, bool]:
    """The model traced and frozen for inference (about half the per-call overhead of eager
    mode at 100 rows), if the traced version gives exactly the eager outputs on batches of
    other sizes than the one traced; the eager model otherwise (a model with data-dependent
    control flow would trace wrongly, and this check catches it)."""

    # A routed model's categories (shopguide.model.routed) among the random ones, so the
    # check runs every route; random ids already cover modulo rules.
    rules = net.rules if isinstance(net, Routed) else []
    routed = torch.tensor([i for r in rules for i in r.ids], dtype=torch.int64)

    def example(n: int, seed: int) -> tuple[torch.Tensor, ...]:
        g = torch.Generator().manual_seed(seed)
        ids = [torch.randint(0, 2**40, (n,), generator=g) for _ in range(3)]
        if len(routed):
            pick = torch.randint(0, len(routed), (n,), generator=g)
            ids[2] = torch.where(torch.rand(n, generator=g) < 0.5, routed[pick], ids[2])
        dense = torch.rand(n, len(net.config.dense_features), generator=g) * 20
        length = net.config.sequence_length
        sequence = torch.stack(
            [
                torch.randint(0, 2**40, (n, length), generator=g),
                torch.randint(0, 2**40, (n, length), generator=g),
                torch.randint(0, 6, (n, length), generator=g),  # 0: an empty slot
                torch.randint(0, 10**8, (n, length), generator=g),
            ],
            dim=-1,
        )
        return (*ids, dense, sequence)

    try:
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.freeze(torch.jit.trace(net.eval(), example(64, 0)))
            for n, seed in ((1, 1), (7, 2), (333, 3)):
                x = example(n, seed)
                if not torch.allclose(traced(*x), net(*x), rtol=0, atol=1e-6):
                    raise ValueError(f"traced outputs differ from eager ones at {n} rows")
        return traced, True
    except Exception as exc:
        log.warning("serving the model in eager mode (tracing failed: %s)", exc)
        return net, False


@dataclass(frozen=True)
class Loaded:
    """One servable model version with everything its requests need."""

    version: str
    path: Path
    net: torch.nn.Module  # traced and frozen when that is exact, else the eager model
    tasks: tuple[str, ...]
    weights: np.ndarray  # ranking weight per task, in `tasks` order
    features: OnlineFeatureReader


@dataclass(frozen=True)
class Scores:
    version: str
    tasks: tuple[str, ...]
    probs: np.ndarray  # (rows, tasks)
    ranking: np.ndarray  # (rows,)
    user_known: np.ndarray  # (rows,) bool
    item_known: np.ndarray  # (rows,) bool


def ranking_weights(serving: ServingParams, tasks: tuple[str, ...]) -> np.ndarray:
    unknown = sorted(set(serving.ranking_weights) - set(tasks))
    if unknown:
        raise ShopguideError(
            f"serving.ranking_weights names tasks the model does not predict: {unknown} "
            f"(the model predicts {list(tasks)})"
        )
    return np.array([serving.ranking_weights.get(t, 0.0) for t in tasks], np.float32)


class ShopguidePredictor(ChampionSwap, kserve.Model):
    # Batches scored at once. One: with two, batches get smaller and the threads contend for
    # the GIL; measured on 2 cores at 8 clients: more CPU per request, a worse p99, no gain.
    scoring_threads = 1
    max_v2_tensors = MAX_V2_TENSORS  # what RequestGuard lets reach the v2 parse

    def __init__(
        self,
        serving: ServingParams,
        feature_repo: Path,
        model_dir: Path | None = None,
        registry: Path | None = None,
    ) -> None:
        super().__init__(serving.model_name)
        self.serving = serving
        self.feature_repo = Path(feature_repo)
        self.model_dir, self.registry = model_dir, registry
        self.max_batch_rows = 4 * serving.max_candidates
        # Scoring runs off the event loop, so health probes answer while a batch is scored.
        self._executor = ThreadPoolExecutor(
            max_workers=self.scoring_threads, thread_name_prefix="shopguide-score"
        )
        self._queue: list[tuple[Batch, asyncio.Future]] = []
        self._in_flight = 0
        self._tasks: set[asyncio.Task] = set()
        self.reader: Reader | None = None
        self.current: Loaded | None = None

    # --- loading and reloading --------------------------------------------------------------

    def _load(self, path: Path, version: str) -> Loaded:
        net = load_model(path)
        tasks = tuple(net.config.tasks)
        runnable, traced = compiled(net)
        log.info("model %s loaded (%s)", version, "traced" if traced else "eager")
        loaded = Loaded(
            version,
            path,
            runnable,
            tasks,
            ranking_weights(self.serving, tasks),
            OnlineFeatureReader(self.reader, net.config.dense_features, net.config.sequence_length),
        )
        warm_up = Batch(np.zeros(1, np.int64), np.zeros(1, np.int64), [1], np.zeros(1, np.int64))
        self._score([warm_up], loaded)  # a version that cannot score is never swapped in
        return loaded

    def load(self) -> bool:
        path, version = resolve_model_dir(self.model_dir, self.registry)
        try:
            self.reader = make_reader(open_store(self.feature_repo), self.serving.online_reader)
        except ShopguideError:
            raise
        except Exception as exc:
            raise ShopguideError(
                f"{self.feature_repo}: cannot open the Feast online store (was `shopguide "
                f"features` run to materialize it?): {exc}"
            ) from exc
        try:  # fail at start-up, not on the first request, if the online store is unusable
            self.current = self._load(path, version)
        except ShopguideError:
            raise
        except Exception as exc:
            raise ShopguideError(
                f"{self.feature_repo}: cannot read online features (was `shopguide features` "
                f"run to materialize them?): {exc}"
            ) from exc
        self.ready = True
        log.info("serving model %s from %s with features from %s", version, path, self.feature_repo)
        self.watch_champion()
        return self.ready

    # --- scoring -----------------------------------------------------------------------------

    @torch.inference_mode()
    def _score(self, batches: list[Batch], loaded: Loaded | None = None) -> list[Scores]:
        """Score several requests' rows as one batch: one feature lookup, one forward pass."""
        loaded = loaded or self.current
        users = np.concatenate([b.users for b in batches])
        items = np.concatenate([b.items for b in batches])
        moments = np.concatenate([b.moments for b in batches])
        started = time.perf_counter()
        feats = loaded.features.fetch(users, items, moments)
        looked_up = time.perf_counter()
        logits = loaded.net(
            torch.from_numpy(users),
            torch.from_numpy(items),
            torch.from_numpy(feats.categories),
            torch.from_numpy(feats.dense),
            torch.from_numpy(feats.sequence),
        )
        probs = torch.sigmoid(logits.float()).numpy()
        metrics.FEATURE_SECONDS.observe(looked_up - started)
        metrics.MODEL_SECONDS.observe(time.perf_counter() - looked_up)
        metrics.BATCH_ROWS.observe(len(items))
        ranking = probs @ loaded.weights
        out, start = [], 0
        for b in batches:
            end = start + len(b.items)
            out.append(
                Scores(
                    loaded.version,
                    loaded.tasks,
                    probs[start:end],
                    ranking[start:end],
                    feats.user_known[start:end],
                    feats.item_known[start:end],
                )
            )
            start = end
        return out

    async def _submit(self, batch: Batch) -> Scores:
        future = asyncio.get_running_loop().create_future()
        self._queue.append((batch, future))
        self._pump()
        return await future

    def _pump(self) -> None:
        """Start batches while scoring threads are free: each takes every queued request that
        fits in `max_batch_rows`. Runs on the event loop, so the queue needs no lock."""
        loop = asyncio.get_running_loop()
        while self._queue and self._in_flight < self.scoring_threads:
            taken, rows = [], 0
            while self._queue and (
                not taken or rows + len(self._queue[0][0].items) <= self.max_batch_rows
            ):
                batch, future = self._queue.pop(0)
                taken.append((batch, future))
                rows += len(batch.items)
            self._in_flight += 1
            task = loop.create_task(self._run(taken))
            self._tasks.add(task)  # keep a reference until it is done
            task.add_done_callback(self._tasks.discard)

    async def _run(self, taken: list[tuple[Batch, asyncio.Future]]) -> None:
        loop = asyncio.get_running_loop()
        try:
            results = await loop.run_in_executor(self._executor, self._score, [b for b, _ in taken])
        except Exception as exc:  # handed to each waiting request
            for _, future in taken:
                if not future.done():
                    future.set_exception(exc)
        else:
            for (_, future), result in zip(taken, results, strict=True):
                if not future.done():
                    future.set_result(result)
        finally:
            self._in_flight -= 1
            self._pump()

    @staticmethod
    def _count(protocol: str, scores: Scores) -> None:
        metrics.ok_requests(protocol).inc()
        metrics.candidates(protocol).inc(len(scores.ranking))
        metrics.UNKNOWN_USERS.inc(int((~scores.user_known).sum()))
        metrics.UNKNOWN_ITEMS.inc(int((~scores.item_known).sum()))

    async def predict(
        self, payload: object, headers: dict[str, str] | None = None
    ) -> dict | InferResponse:
        protocol = "v2" if isinstance(payload, InferRequest) else "v1"
        try:
            if protocol == "v2":
                batch = parse_infer_request(payload, self.serving.max_candidates)
            else:
                request = parse_request(payload, self.serving.max_candidates)
                batch = v1_batch(request)
        except ShopguideError as exc:
            metrics.REQUESTS.labels(protocol=protocol, outcome="invalid").inc()
            raise RejectedRequest(str(exc)) from None
        scores = await self._submit(batch)
        self._count(protocol, scores)
        if protocol == "v2":
            return self._v2_response(payload, batch, scores)
        return self._v1_response(request, batch, scores)

    # --- responses ---------------------------------------------------------------------------

    @staticmethod
    def _v1_response(request, batch: Batch, scores: Scores) -> dict:
        probs = scores.probs.tolist()
        ranking = scores.ranking.tolist()
        unknown_item = (~scores.item_known).tolist()
        items = batch.items.tolist()
        predictions, start = [], 0
        for inst, n in zip(request.instances, batch.sizes, strict=True):
            end = start + n
            order = np.argsort(-scores.ranking[start:end], kind="stable")
            predictions.append(
                {
                    "user_id": inst.user_id,
                    "model_version": scores.version,
                    "unknown_user": not bool(scores.user_known[start]),
                    "ranked_item_ids": [inst.item_ids[i] for i in order.tolist()],
                    "items": [
                        {
                            "item_id": items[r],
                            "score": ranking[r],
                            "scores": dict(zip(scores.tasks, probs[r], strict=True)),
                            "unknown_item": unknown_item[r],
                        }
                        for r in range(start, end)
                    ],
                }
            )
            start = end
        return {"model_version": scores.version, "predictions": predictions}

    def _v2_response(self, request: InferRequest, batch: Batch, scores: Scores) -> InferResponse:
        n = len(batch.items)
        # Rank of each row among the rows of the same user (0: best), by ranking score.
        order = np.lexsort((np.arange(n), -scores.ranking, batch.users))
        rank = np.empty(n, np.int64)
        sorted_users = batch.users[order]
        starts = np.flatnonzero(np.r_[True, sorted_users[1:] != sorted_users[:-1]])
        group_start = np.repeat(starts, np.diff(np.r_[starts, n]))
        rank[order] = np.arange(n) - group_start
        outputs = [
            InferOutput("score", [n], "FP32", scores.ranking.astype(np.float32).tolist()),
            *(
                InferOutput(task, [n], "FP32", scores.probs[:, j].astype(np.float32).tolist())
                for j, task in enumerate(scores.tasks)
            ),
            InferOutput("rank", [n], "INT64", rank.tolist()),
            InferOutput("unknown_user", [n], "BOOL", (~scores.user_known).tolist()),
            InferOutput("unknown_item", [n], "BOOL", (~scores.item_known).tolist()),
        ]
        return InferResponse(
            response_id=request.id or "",
            model_name=self.name,
            model_version=scores.version,
            infer_outputs=outputs,
            requested_outputs=request.request_outputs,
        )

    def get_input_types(self) -> list[dict]:
        return [
            {"name": "user_id", "datatype": "INT64", "shape": [-1]},
            {"name": "item_id", "datatype": "INT64", "shape": [-1]},
            {"name": "timestamp", "datatype": "INT64", "shape": [-1], "optional": True},
        ]

    def get_output_types(self) -> list[dict]:
        tasks = self.current.tasks if self.current else ()
        return [
            {"name": "score", "datatype": "FP32", "shape": [-1]},
            *({"name": t, "datatype": "FP32", "shape": [-1]} for t in tasks),
            {"name": "rank", "datatype": "INT64", "shape": [-1]},
            {"name": "unknown_user", "datatype": "BOOL", "shape": [-1]},
            {"name": "unknown_item", "datatype": "BOOL", "shape": [-1]},
        ]
