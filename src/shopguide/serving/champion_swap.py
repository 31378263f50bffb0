"""Serving the registry's champion while it changes: a background thread polls the champion
pointer and swaps in a newly promoted version once it has loaded and scored a warm-up (the
predictor's `_load`); requests already scoring finish on the version they started with, so
none is dropped. A version that fails to load is logged, counted and not retried until the
pointer moves again; the current one keeps serving. Shared by both predictors (the event-log
pipeline's and a declared dataset's)."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Protocol

from shopguide.config import ServingParams
from shopguide.errors import ShopguideError
from shopguide.registry import champion
from shopguide.serving import metrics

log = logging.getLogger(__name__)


class Servable(Protocol):
    version: str


class ChampionSwap:
    """Mixin for a `kserve.Model` serving `self.current` (a `Servable` its `_load` returns)."""

    serving: ServingParams
    registry: Path | None
    model_dir: Path | None
    current: Servable | None

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # kserve.Model's
        self._stop = threading.Event()
        self._failed_version: str | None = None

    def _load(self, path: Path, version: str) -> Servable:
        raise NotImplementedError

    @property
    def version(self) -> str:
        return self.current.version if self.current else ""

    def watch_champion(self) -> None:
        """Start polling the registry every `serving.reload_interval_s` (0: never), when this
        serves the registry's champion rather than one model directory."""
        metrics.MODEL_INFO.labels(version=self.version).set(1)
        if self.registry is not None and self.model_dir is None and self.serving.reload_interval_s:
            threading.Thread(target=self._watch, name="shopguide-reload", daemon=True).start()

    def reload_if_changed(self) -> bool:
        """Swap in the registry's champion if it is not the one being served; True if swapped."""
        try:
            current = champion(self.registry)
        except ShopguideError as exc:
            log.warning("champion pointer unreadable, keeping %s: %s", self.version, exc)
            return False
        if current is None or current.name in (self.version, self._failed_version):
            return False
        started = time.monotonic()
        try:
            loaded = self._load(current.path, current.name)
        except Exception as exc:  # a bad version must not take serving down
            self._failed_version = current.name
            metrics.RELOADS.labels(outcome="failure").inc()
            log.error("cannot serve champion %s, keeping %s: %s", current.name, self.version, exc)
            return False
        previous, self.current = self.current, loaded  # one reference swap: atomic
        self._failed_version = None
        metrics.MODEL_INFO.labels(version=loaded.version).set(1)
        if previous is not None:
            metrics.MODEL_INFO.remove(previous.version)
        metrics.RELOADS.labels(outcome="success").inc()
        log.warning(
            "now serving champion %s (was %s; loaded in %.2fs)",
            loaded.version,
            previous.version if previous else None,
            time.monotonic() - started,
        )
        return True

    def _watch(self) -> None:
        while not self._stop.wait(self.serving.reload_interval_s):
            try:
                self.reload_if_changed()
            except Exception:  # keep watching whatever happened
                log.exception("champion reload check failed")

    def stop(self) -> None:
        self._stop.set()
        super().stop()  # kserve.Model's
