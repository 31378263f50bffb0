"""Feast's Spark offline store (opt-in: SHOPGUIDE_SPARK_TEST=1; needs the `spark` extra and a
Java 17+ runtime): get_historical_features in Spark local mode gives the training set of the
default DuckDB ASOF JOIN on a slice of the real sample's exposures."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from shopguide.features import apply_repo, feast_training_set
from shopguide.training_join import asof_training_set
from tests.conftest import PipelineRun, copy_feature_repo

pytestmark = pytest.mark.skipif(
    os.environ.get("SHOPGUIDE_SPARK_TEST") != "1", reason="opt-in: SHOPGUIDE_SPARK_TEST=1"
)


def test_spark_offline_store_equals_asof_join(pipeline_run: PipelineRun, tmp_path: Path) -> None:
    pytest.importorskip("pyspark")
    repo = copy_feature_repo(tmp_path / "feature_repo")
    shutil.copytree(
        pipeline_run.feature_repo / "data", repo / "data", ignore=shutil.ignore_patterns("*.db")
    )
    config = yaml.safe_load((repo / "feature_store.yaml").read_text())
    config["offline_store"] = {
        "type": "spark",
        "spark_conf": {
            "spark.master": "local[2]",
            "spark.sql.session.timeZone": "UTC",
            "spark.ui.enabled": "false",
            "spark.sql.shuffle.partitions": "4",
        },
    }
    (repo / "feature_store.yaml").write_text(yaml.safe_dump(config))
    store = apply_repo(repo)
    assert type(store.get_feature_view("user_stats").batch_source).__name__ == "SparkSource"

    exposures = pd.read_parquet(pipeline_run.exposures)
    part = exposures.iloc[:: len(exposures) // 3000]  # every period, same-second ties included
    path = tmp_path / "exposures.parquet"
    part.to_parquet(path, index=False)
    spark_out, asof_out = tmp_path / "spark.parquet", tmp_path / "asof.parquet"
    assert feast_training_set(store, path, spark_out) == len(part)
    asof_training_set(store, path, asof_out, pipeline_run.params)
    pd.testing.assert_frame_equal(pd.read_parquet(spark_out), pd.read_parquet(asof_out))
