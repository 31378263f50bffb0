"""KServe predictor: loads the champion, reads online features from Feast, scores every
candidate of a request in one forward pass and ranks them per instance."""

from __future__ import annotations

import asyncio
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import kserve
import numpy as np
import torch
from kserve.errors import InvalidInput

from shopguide.config import ServingParams
from shopguide.errors import ShopguideError
from shopguide.features import open_store
from shopguide.model.store import load_model
from shopguide.registry import champion, version_name
from shopguide.serving.features import OnlineFeatures, check_dense_order, fetch
from shopguide.serving.schema import parse_request

log = logging.getLogger(__name__)


def resolve_model_dir(model_dir: Path | None, registry: Path | None) -> tuple[Path, str]:
    """An explicit directory (KServe's /mnt/models) wins; otherwise the registry's champion."""
    if model_dir is not None:
        return Path(model_dir), version_name(Path(model_dir))
    current = champion(registry) if registry is not None else None
    if current is None:
        raise ShopguideError(f"{registry}: the registry has no champion; run promote first")
    return current.path, current.name


class ShopguidePredictor(kserve.Model):
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
        self.version = ""
        # Scoring runs off the event loop, so health probes answer while a request is scored,
        # and on one thread, so the Feast SQLite connection is never used concurrently.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shopguide-score")

    def load(self) -> bool:
        path, self.version = resolve_model_dir(self.model_dir, self.registry)
        self.net = load_model(path)
        check_dense_order(self.net.config.dense_features)
        self.store = open_store(self.feature_repo)
        weights = self.serving.ranking_weights
        self.weights = np.array([weights.get(t, 0.0) for t in self.net.config.tasks], np.float32)
        try:  # fail at start-up, not on the first request, if the online store is unusable
            self._score(np.zeros(1, np.int64), np.zeros(1, np.int64))
        except Exception as exc:
            raise ShopguideError(
                f"{self.feature_repo}: cannot read online features (was `shopguide features` "
                f"run to materialize them?): {exc}"
            ) from exc
        self.ready = True
        log.info(
            "serving model %s from %s with features from %s", self.version, path, self.feature_repo
        )
        return self.ready

    @torch.inference_mode()
    def _score(
        self, users: np.ndarray, items: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, OnlineFeatures]:
        """Task probabilities (rows, tasks) and ranking scores (rows,) of all rows at once."""
        feats = fetch(self.store, users, items, self.net.config.dense_features)
        logits = self.net(
            torch.from_numpy(users),
            torch.from_numpy(items),
            torch.from_numpy(feats.categories),
            torch.from_numpy(feats.dense),
        )
        probs = torch.sigmoid(logits).numpy()
        return probs, probs @ self.weights, feats

    def _predict(self, payload: object) -> dict:
        try:
            request = parse_request(payload, self.serving.max_candidates)
        except ShopguideError as exc:
            raise InvalidInput(str(exc)) from exc
        sizes = [len(inst.item_ids) for inst in request.instances]
        users = np.repeat(np.array([i.user_id for i in request.instances], np.int64), sizes)
        items = np.array([x for inst in request.instances for x in inst.item_ids], np.int64)
        probs, ranking, feats = self._score(users, items)
        tasks = self.net.config.tasks
        predictions, start = [], 0
        for inst, n in zip(request.instances, sizes, strict=True):
            rows = range(start, start + n)
            order = np.argsort(-ranking[start : start + n], kind="stable")
            predictions.append(
                {
                    "user_id": inst.user_id,
                    "model_version": self.version,
                    "unknown_user": not bool(feats.user_known[start]),
                    "ranked_item_ids": [inst.item_ids[i] for i in order],
                    "items": [
                        {
                            "item_id": int(items[r]),
                            "score": float(ranking[r]),
                            "scores": {t: float(probs[r, j]) for j, t in enumerate(tasks)},
                            "unknown_item": not bool(feats.item_known[r]),
                        }
                        for r in rows
                    ],
                }
            )
            start += n
        return {"model_version": self.version, "predictions": predictions}

    async def predict(self, payload: object, headers: dict[str, str] | None = None) -> dict:
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, self._predict, payload
        )


def serve(
    serving: ServingParams,
    feature_repo: Path,
    model_dir: Path | None,
    registry: Path | None,
    http_port: int,
) -> None:
    """Run the model server in the foreground.

    Unless OMP_NUM_THREADS says otherwise, torch gets one thread: a request is a few small
    matrix products, and torch's default (every core of the node, not the pod's CPU limit)
    makes each op wait on starved threads, measured at 100x slower on a busy 2-core host.
    """
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)
    model = ShopguidePredictor(serving, feature_repo, model_dir=model_dir, registry=registry)
    model.load()
    kserve.ModelServer(http_port=http_port, enable_grpc=False, workers=1).start([model])
