"""KServe predictor: loads the champion, reads online features from Feast, scores every
candidate of a request in one forward pass and ranks them."""

from __future__ import annotations

import logging
from pathlib import Path

import kserve
import numpy as np
import torch
from kserve.errors import InvalidInput

from shopguide.config import ServingParams
from shopguide.errors import ShopguideError
from shopguide.features import open_store
from shopguide.model.store import load_model
from shopguide.registry import champion
from shopguide.serving.features import fetch
from shopguide.serving.schema import parse_request

log = logging.getLogger(__name__)


def resolve_model_dir(model_dir: Path | None, registry: Path | None) -> tuple[Path, str]:
    """An explicit directory (KServe's /mnt/models) wins; otherwise the registry's champion."""
    if model_dir is not None:
        return Path(model_dir), Path(model_dir).name
    current = champion(registry) if registry is not None else None
    if current is None:
        raise ShopguideError(f"{registry}: the registry has no champion; run promote first")
    return current.path, current.name


class ShopguidePredictor(kserve.Model):
    def __init__(self, serving: ServingParams, feature_repo: Path, model_dir: Path | None = None,
                 registry: Path | None = None) -> None:
        super().__init__(serving.model_name)
        self.serving = serving
        self.feature_repo = Path(feature_repo)
        self.model_dir, self.registry = model_dir, registry
        self.version = ""

    def load(self) -> bool:
        path, self.version = resolve_model_dir(self.model_dir, self.registry)
        self.net = load_model(path)
        self.store = open_store(self.feature_repo)
        weights = self.serving.ranking_weights
        self.weights = torch.tensor([weights.get(t, 0.0) for t in self.net.config.tasks])
        self.ready = True
        log.info("serving model %s from %s with features from %s", self.version, path,
                 self.feature_repo)
        return self.ready

    @torch.no_grad()
    def _score(self, user_id: int, item_ids: list[int]) -> dict:
        feats = fetch(self.store, user_id, item_ids, self.net.config.dense_features)
        n = len(item_ids)
        probs = torch.sigmoid(self.net(
            torch.full((n,), user_id, dtype=torch.int64),
            torch.tensor(item_ids, dtype=torch.int64),
            torch.from_numpy(feats.categories),
            torch.from_numpy(feats.dense),
        ))
        ranking_score = (probs * self.weights).sum(dim=1).numpy()
        order = np.argsort(-ranking_score, kind="stable")
        tasks = self.net.config.tasks
        return {
            "user_id": user_id,
            "model_version": self.version,
            "unknown_user": not feats.user_known,
            "ranked_item_ids": [item_ids[i] for i in order],
            "items": [
                {"item_id": item_ids[i], "score": float(ranking_score[i]),
                 "scores": {t: float(probs[i, j]) for j, t in enumerate(tasks)},
                 "unknown_item": not bool(feats.item_known[i])}
                for i in range(n)
            ],
        }

    def predict(self, payload: dict, headers: dict[str, str] | None = None) -> dict:
        try:
            request = parse_request(payload, self.serving.max_candidates)
        except ShopguideError as exc:
            raise InvalidInput(str(exc)) from exc
        return {
            "model_version": self.version,
            "predictions": [self._score(i.user_id, i.item_ids) for i in request.instances],
        }


def serve(serving: ServingParams, feature_repo: Path, model_dir: Path | None,
          registry: Path | None, http_port: int) -> None:
    model = ShopguidePredictor(serving, feature_repo, model_dir=model_dir, registry=registry)
    model.load()
    kserve.ModelServer(http_port=http_port, enable_grpc=False, workers=1).start([model])
