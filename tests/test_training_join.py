"""The training-set join pass by pass and chunk by chunk: the same rows as in one piece."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from shopguide import features, training_join
from shopguide.features import apply_repo, write_feature_tables
from shopguide.snapshots import pass_row_groups
from shopguide.training_join import asof_training_set
from tests.conftest import PipelineRun, copy_feature_repo


def test_passes_and_chunks_give_the_one_piece_training_set(
    pipeline_run: PipelineRun, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Feature tables written in several hash passes, joined a pass at a time into several
    output chunks, give exactly the pipeline's training set (one pass, one chunk), which
    tests/test_features.py checks against Feast's."""
    monkeypatch.setattr(features, "EVENTS_PER_PASS", 15_000)
    monkeypatch.setattr(training_join, "CHUNK_ROWS", 16_384)
    repo = copy_feature_repo(tmp_path / "repo")
    write_feature_tables(pipeline_run.events, repo, pipeline_run.params)
    for view in ("user_stats", "item_stats", "category_stats", "user_item_stats", "user_sequence"):
        passes = pass_row_groups(pq.ParquetFile(repo / "data" / f"{view}.parquet"))
        assert len(passes) > 4 and all(passes), view
    spill = tmp_path / "spill"
    data = pipeline_run.params.data.model_copy(update={"duckdb_temp_directory": spill})
    params = pipeline_run.params.model_copy(update={"data": data})
    out = tmp_path / "training_set.parquet"
    store = apply_repo(repo)
    rows = pq.ParquetFile(pipeline_run.exposures).metadata.num_rows
    assert asof_training_set(store, pipeline_run.exposures, out, params) == rows
    assert pq.ParquetFile(out).num_row_groups >= 3  # one or more per output chunk
    pd.testing.assert_frame_equal(pd.read_parquet(out), pd.read_parquet(pipeline_run.training_set))
    assert not list(spill.glob("training-join-*"))  # intermediate files removed
