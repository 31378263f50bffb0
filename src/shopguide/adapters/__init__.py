"""Dataset adapters: each turns one public format into the canonical event and exposure tables.

Canonical events: user_id, item_id, category_id (BIGINT), behavior (VARCHAR), ts (BIGINT epoch
seconds). Canonical exposures: user_id, item_id, category_id, t0, one 0/1 column per task, split
(train/test), optionally followed by the dataset's own feature columns. `data.adapter` picks one;
every adapter has the signature of `Ingest` and returns the data card of what it wrote.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from shopguide.adapters import aliccp, aliexpress, rees46, taobao
from shopguide.config import Params
from shopguide.io import atomic_path

Ingest = Callable[[Path, Path, Path, Params], dict]

ADAPTERS: dict[str, Ingest] = {
    "taobao": taobao.ingest,
    "rees46": rees46.ingest,
    "aliexpress": aliexpress.ingest,
    "aliccp": aliccp.ingest,
}
# Behaviour types each adapter writes into the canonical event table; anything else is a fault.
BEHAVIOURS: dict[str, tuple[str, ...]] = {
    "taobao": taobao.BEHAVIOURS,
    "rees46": rees46.BEHAVIOURS,
    "aliexpress": aliexpress.BEHAVIOURS,
    "aliccp": aliccp.BEHAVIOURS,
}


def ingest(source: Path, events: Path, exposures: Path, params: Params) -> dict:
    """Run the adapter named by `data.adapter`; returns its data card. Both tables are staged
    and renamed into place one right after the other once both are written: raw data that
    yields events but no exposures leaves the previous pair as it was, never new events
    beside old exposures."""
    with atomic_path(events) as staged_events, atomic_path(exposures) as staged_exposures:
        return ADAPTERS[params.data.adapter](Path(source), staged_events, staged_exposures, params)
