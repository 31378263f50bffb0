"""Entities: who and what the behaviour features describe (pairs of them key the history views)."""

from feast import Entity, ValueType

user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.INT64)
item = Entity(name="item", join_keys=["item_id"], value_type=ValueType.INT64)
category = Entity(name="category", join_keys=["category_id"], value_type=ValueType.INT64)
