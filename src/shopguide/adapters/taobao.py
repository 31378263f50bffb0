"""Alibaba UserBehavior (Taobao): streamed CSV -> events, then taobao-mtl-v1 exposures."""

from __future__ import annotations

from pathlib import Path

from shopguide.adapters.card import data_card, time_split_check
from shopguide.config import Params
from shopguide.exposures import build_exposures
from shopguide.ingest import ingest_taobao

BEHAVIOURS: tuple[str, ...] = ("pv", "cart", "fav", "buy")


def ingest(source: Path, events: Path, exposures: Path, params: Params) -> dict:
    summary = ingest_taobao(source, events, params.data)
    build_exposures(events, exposures, params)
    return data_card(
        "taobao",
        source,
        events,
        exposures,
        params.protocol.tasks,
        params.data,
        malformed_rows=summary.malformed_rows,
        malformed_examples=summary.malformed_examples,
        **time_split_check(events, exposures, params),
        duplicate_events_dropped=summary.duplicate_events_dropped,
    )
