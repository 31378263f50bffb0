"""Feature views: past behaviour of users, items, categories, user x item and user x category
pairs, and the user's recent events.

Each row at time T summarises events strictly before T, and rows exist wherever a value
changes, so Feast's point-in-time join gives every row the latest state before its moment.
"""

from datetime import timedelta

from data_sources import item_attributes_source, sources
from entities import category, item, user
from feast import FeatureView, Field
from feast.types import Float32, Int64
from spec import VIEWS

from shopguide.feature_spec import ITEM_ATTRIBUTES_VIEW

# Cumulative features never go stale, so rows stay valid for years.
TTL = timedelta(days=3650)
_ENTITIES = {"user_id": user, "item_id": item, "category_id": category}

views = {
    view.name: FeatureView(
        name=view.name,
        entities=[_ENTITIES[key] for key in view.keys],
        ttl=TTL,
        schema=[Field(name=f, dtype=Float32) for f in view.floats]
        + [Field(name=f, dtype=Int64) for f in view.ints],
        source=sources[view.name],
        online=True,
    )
    for view in VIEWS
}
user_stats = views["user_stats"]
item_stats = views["item_stats"]
category_stats = views["category_stats"]
user_item_stats = views["user_item_stats"]
user_category_stats = views["user_category_stats"]
user_sequence = views["user_sequence"]
# The predictor looks up a candidate item's category here before the category features.
item_attributes = FeatureView(
    name=ITEM_ATTRIBUTES_VIEW,
    entities=[item],
    ttl=TTL,
    schema=[Field(name="category_id", dtype=Int64)],
    source=item_attributes_source,
    online=True,
)
