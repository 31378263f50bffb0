"""Offline sources: Parquet files written by `shopguide features` (paths relative to this repo).

Feast's Spark offline store (`offline_store: {type: spark}` in feature_store.yaml, pyspark from
the `spark` extra) reads SparkSource only, so the same files are declared as one then.
"""

from pathlib import Path

import yaml
from feast import FileSource
from spec import VIEWS

from shopguide.feature_spec import ITEM_ATTRIBUTES_VIEW

_config = yaml.safe_load(Path(__file__).with_name("feature_store.yaml").read_text())
_SPARK = _config.get("offline_store", {}).get("type") == "spark"


def _parquet_source(name: str):
    path = f"data/{name}.parquet"
    if _SPARK:
        from feast.infra.offline_stores.contrib.spark_offline_store.spark_source import (
            SparkSource,
        )

        return SparkSource(
            name=f"{name}_source",
            path=path,
            file_format="parquet",
            timestamp_field="event_timestamp",
        )
    return FileSource(name=f"{name}_source", path=path, timestamp_field="event_timestamp")


sources = {view.name: _parquet_source(view.name) for view in VIEWS}
item_attributes_source = _parquet_source(ITEM_ATTRIBUTES_VIEW)
