"""Feature views: past behaviour counts and rates per user, item and category.

Each row at time T summarises events strictly before T, and rows exist wherever a value
changes, so Feast's point-in-time join gives every exposure the latest state before its t0.
"""

from datetime import timedelta

from data_sources import item_attributes_source, stats_sources
from entities import category, item, user
from feast import FeatureView, Field
from feast.types import Float32, Int64

from shopguide.feature_spec import ITEM_ATTRIBUTES_VIEW, stat_features, stats_view

# Cumulative features never go stale, so rows stay valid for years.
TTL = timedelta(days=3650)
_stats_schema = [Field(name=name, dtype=Float32) for name in stat_features()]

user_stats = FeatureView(
    name=stats_view("user"),
    entities=[user],
    ttl=TTL,
    schema=_stats_schema,
    source=stats_sources["user"],
    online=True,
)
item_stats = FeatureView(
    name=stats_view("item"),
    entities=[item],
    ttl=TTL,
    schema=_stats_schema,
    source=stats_sources["item"],
    online=True,
)
category_stats = FeatureView(
    name=stats_view("category"),
    entities=[category],
    ttl=TTL,
    schema=_stats_schema,
    source=stats_sources["category"],
    online=True,
)
# The predictor looks up a candidate item's category here before the category features.
item_attributes = FeatureView(
    name=ITEM_ATTRIBUTES_VIEW,
    entities=[item],
    ttl=TTL,
    schema=[Field(name="category_id", dtype=Int64)],
    source=item_attributes_source,
    online=True,
)
