"""AliExpress cross-border search logs, torch-rechub's processed CSV.

The public release has anonymous features only: `search_id` (one search session) stands in for
the user, the item is identified by the signature of its 16 categorical features (a hash), and
there is no category field, so every exposure has category_id 0. `click` and `conversion` are
the labels.
"""

from __future__ import annotations

from pathlib import Path

from shopguide.adapters.impressions import BEHAVIOURS, ingest_impressions
from shopguide.config import Params

CATEGORICALS = ", ".join(f'"categorical_{i}"' for i in range(1, 17))
IDS = {
    "user_id": '"search_id"',
    "item_id": f"(hash({CATEGORICALS}) % 9223372036854775807)",
    "category_id": "0",
}
LABELS = {"click": "click", "buy": "conversion"}


def ingest(source: Path, events: Path, exposures: Path, params: Params) -> dict:
    return ingest_impressions("aliexpress", source, events, exposures, params, IDS, LABELS)


__all__ = ["BEHAVIOURS", "ingest"]
