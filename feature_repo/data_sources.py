"""Offline sources: Parquet files written by `shopguide features` (paths relative to this repo)."""

from feast import FileSource

from shopguide.feature_spec import ENTITIES, ITEM_ATTRIBUTES_VIEW, stats_view

stats_sources = {
    entity: FileSource(
        name=f"{stats_view(entity)}_source",
        path=f"data/{stats_view(entity)}.parquet",
        timestamp_field="event_timestamp",
    )
    for entity in ENTITIES
}

item_attributes_source = FileSource(
    name=f"{ITEM_ATTRIBUTES_VIEW}_source",
    path=f"data/{ITEM_ATTRIBUTES_VIEW}.parquet",
    timestamp_field="event_timestamp",
)
