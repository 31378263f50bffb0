"""Ali-CCP (Alibaba Click and Conversion Prediction), torch-rechub's processed CSV.

Field 101 is the user id, 205 the item id and 206 the item's category id (the dataset's
published field list); `click` and `purchase` are the labels.
"""

from __future__ import annotations

from pathlib import Path

from shopguide.adapters.impressions import BEHAVIOURS, ingest_impressions
from shopguide.config import Params

IDS = {"user_id": '"101"', "item_id": '"205"', "category_id": '"206"'}
LABELS = {"click": "click", "buy": "purchase"}


def ingest(source: Path, events: Path, exposures: Path, params: Params) -> dict:
    return ingest_impressions("aliccp", source, events, exposures, params, IDS, LABELS)


__all__ = ["BEHAVIOURS", "ingest"]
