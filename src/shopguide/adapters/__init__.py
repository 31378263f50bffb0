"""Dataset adapters: each turns one public format into the canonical event and exposure tables.

Canonical events: user_id, item_id, category_id (BIGINT), behavior (VARCHAR), ts (BIGINT epoch
seconds). Canonical exposures: user_id, item_id, category_id, t0, one 0/1 column per task, split
(train/test), `sampled` for event logs (shopguide.sampling), optionally followed by the
dataset's own feature columns. `data.adapter` picks one; every adapter has the signature of
`Ingest` and returns the data card of what it wrote. The ranking queries of taobao-rank-v1 are
built from the canonical events, whatever the adapter.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from shopguide.adapters import aliccp, aliexpress, rees46, taobao
from shopguide.config import Params
from shopguide.io import all_or_none
from shopguide.ranking.queries import build_queries

Ingest = Callable[[Path, Path, Path, Params], dict]

ADAPTERS: dict[str, Ingest] = {
    "taobao": taobao.ingest,
    "rees46": rees46.ingest,
    "aliexpress": aliexpress.ingest,
    "aliccp": aliccp.ingest,
}
# Files an adapter writes besides the two tables, from the events path.
SIDE_OUTPUTS: dict[str, Callable[[Path], list[Path]]] = {
    "rees46": lambda events: [rees46.item_features_path(events)],
}
# Behaviour types each adapter writes into the canonical event table; anything else is a fault.
BEHAVIOURS: dict[str, tuple[str, ...]] = {
    "taobao": taobao.BEHAVIOURS,
    "rees46": rees46.BEHAVIOURS,
    "aliexpress": aliexpress.BEHAVIOURS,
    "aliccp": aliccp.BEHAVIOURS,
}


def ingest(source: Path, events: Path, exposures: Path, queries: Path, params: Params) -> dict:
    """Run the adapter named by `data.adapter`, then build the ranking queries; returns the
    data card. All outputs are replaced or none: raw data that yields events but no exposures
    leaves the previous tables as they were, never new events beside old exposures."""
    events, exposures, queries = Path(events), Path(exposures), Path(queries)
    side = SIDE_OUTPUTS.get(params.data.adapter, _none)(events)
    with all_or_none([events, exposures, queries, *side]):
        card = ADAPTERS[params.data.adapter](Path(source), events, exposures, params)
        card["ranking_queries"] = build_queries(events, queries, params)
        return card


def _none(_: Path) -> list[Path]:
    return []
