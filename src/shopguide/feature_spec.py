"""Names of the point-in-time behaviour features: the one list shared by the Feast repo,
the feature builder, the model and the predictor."""

from __future__ import annotations

from shopguide.config import BEHAVIOURS

# Trailing windows over which behaviour is counted; "all" is everything before the snapshot.
WINDOW_HOURS: tuple[int, ...] = (24, 72)
RATE_TASKS: tuple[str, ...] = ("cart", "fav", "buy")
ENTITIES: dict[str, str] = {"user": "user_id", "item": "item_id", "category": "category_id"}
FEATURE_SERVICE = "shopguide_model"
ITEM_ATTRIBUTES_VIEW = "item_attributes"


def window_names() -> list[str]:
    return [f"{h}h" for h in WINDOW_HOURS] + ["all"]


def count_features() -> list[str]:
    return [f"{b}_{w}" for w in window_names() for b in BEHAVIOURS]


def rate_features() -> list[str]:
    """Conversion rates per view over the longest window and all history."""
    return [f"{t}_rate_{w}" for w in window_names()[-2:] for t in RATE_TASKS]


def stat_features() -> list[str]:
    return count_features() + rate_features()


def stats_view(entity: str) -> str:
    return f"{entity}_stats"


def model_feature_columns() -> list[str]:
    """Training-set column names (Feast full feature names) the model consumes, in order."""
    return [f"{stats_view(e)}__{f}" for e in ENTITIES for f in stat_features()]
