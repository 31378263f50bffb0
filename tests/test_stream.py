"""The streamed training set (shopguide.model.stream): the time cut is `time_split`'s, an
epoch through a small shuffle buffer reads every row once with each moment group whole, the
processes of a data-parallel run read disjoint shares in the same number of steps, and a set
that fits in the buffer is read once."""

from __future__ import annotations

import itertools
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from shopguide.errors import ShopguideError
from shopguide.model.stream import TensorStream, TimeCut, _prefetched, parts_of
from shopguide.model.tensors import Tensors, moment_groups, time_split


def _frame(rows: int, seed: int = 0) -> pd.DataFrame:
    """Rows of 3 users at rows / 30 moments: groups of about 10 rows, many ties in t0."""
    rng = np.random.default_rng(seed)
    t0 = np.sort(rng.integers(0, rows // 30, rows))
    return pd.DataFrame(
        {
            "user_id": rng.integers(0, 3, rows),
            "item_id": np.arange(rows),  # a row's identity
            "category_id": rng.integers(0, 9, rows),
            "t0": t0,
            "label": rng.integers(0, 2, rows).astype(np.float32),
        }
    ).sort_values(["t0", "user_id"], kind="stable", ignore_index=True)


def _convert(frame: pd.DataFrame) -> Tensors:
    return Tensors.of(
        frame,
        dense=np.zeros((len(frame), 1), np.float32),
        labels=frame[["label"]].to_numpy(np.float32),
        group=moment_groups(frame),
    )


def _stream(
    frame: pd.DataFrame, path: Path, row_group: int, buffer_rows: int, read: list | None = None
) -> TensorStream:
    pq.write_table(
        pa.Table.from_pandas(frame, preserve_index=False), path, row_group_size=row_group
    )
    parts = parts_of([path])
    sizes = [pq.ParquetFile(path).metadata.row_group(g).num_rows for g in range(len(parts))]

    def select(index: int, part: pd.DataFrame) -> pd.DataFrame:
        if read is not None:
            read.append(index)
        return part

    return TensorStream(
        files=(path,),
        parts=tuple(parts),
        rows=tuple(sizes),
        select=select,
        convert=_convert,
        buffer_rows=buffer_rows,
    )


def test_the_time_cut_is_time_splits_split_in_stream_order() -> None:
    frame = _frame(5000)
    for fraction in (0.15, 0.5, 0.01):
        fit, _ = time_split(frame, fraction)
        cut = TimeCut.of(np.array_split(frame["t0"].to_numpy(), 7), fraction)
        parts, ties, mask = np.array_split(frame["t0"].to_numpy(), 7), 0, []
        for t0 in parts:  # each part on its own, told the ties before it
            mask.append(cut.fit_rows(t0, ties))
            ties += int((t0 == cut.t0).sum())
        assert frame["item_id"][np.concatenate(mask)].tolist() == fit["item_id"].tolist()


def test_an_epoch_through_a_small_buffer_reads_every_row_once_groups_whole(
    tmp_path: Path,
) -> None:
    frame = _frame(3000)
    stream = _stream(frame, tmp_path / "set.parquet", row_group=400, buffer_rows=700)
    batches = list(stream.batches(torch.Generator().manual_seed(1), 64, grouped=True))
    items = torch.cat([b.item for b, _ in batches])
    assert sorted(items.tolist()) == list(range(3000))
    assert sum(rows for _, rows in batches) == 3000
    assert all(len(b) <= 64 for b, _ in batches)
    assert items.tolist() != list(range(3000))  # shuffled
    # each moment group's rows are together in the epoch's order, but where a batch or a
    # row group cuts it (a plain shuffle would scatter nearly every row of a group)
    order = torch.cat([b.group for b, _ in batches]).numpy()
    runs = len(np.flatnonzero(order[1:] != order[:-1])) + 1
    groups = len(np.unique(order))
    assert 100 < groups < 400
    assert runs <= groups + len(batches) + len(stream.parts)


def test_half_the_buffer_waits_to_mix_with_the_row_groups_read_next(tmp_path: Path) -> None:
    """Rows of the first row group read still reach batches after later row groups filled
    the buffer (a fill-and-drain buffer would have emptied it), and no batch is a view that
    keeps the buffer alive."""
    frame = _frame(6000, seed=2)
    stream = _stream(frame, tmp_path / "set.parquet", row_group=500, buffer_rows=1000)
    read: list[int] = []
    stream = replace(stream, select=lambda i, part: read.append(i) or part)
    batches = [b for b, _ in stream.batches(torch.Generator().manual_seed(4), 50)]
    first = set(range(read[0] * 500, read[0] * 500 + 500))  # item ids of the first row group
    late = torch.cat([b.item for b in batches[len(batches) // 2 :]]).tolist()
    assert first & set(late)
    assert all(b.dense.untyped_storage().nbytes() == b.dense.nbytes for b in batches)


def test_two_processes_read_disjoint_shares_in_equal_steps(tmp_path: Path) -> None:
    frame = _frame(4000, seed=3)
    steps, rows_read, items = [], [], []
    for rank in (0, 1):
        read: list[int] = []
        stream = _stream(frame, tmp_path / "set.parquet", row_group=250, buffer_rows=500, read=read)
        batches = list(stream.batches(torch.Generator().manual_seed(5), 128, rank, 2))
        steps.append(len(batches))
        rows_read.append(set(read))
        items.append(set(torch.cat([b.item for b, _ in batches]).tolist()))
        assert all(len(b) <= 64 for b, _ in batches)  # each its half of the global batch
    assert steps[0] == steps[1] > 0
    assert not rows_read[0] & rows_read[1]  # no part read by both
    assert rows_read[0] | rows_read[1] == set(range(16))
    assert not items[0] & items[1]


def test_a_set_that_fits_in_the_buffer_is_read_once(tmp_path: Path) -> None:
    read: list[int] = []
    stream = _stream(_frame(1000), tmp_path / "set.parquet", 300, buffer_rows=5000, read=read)
    for epoch in range(3):
        rows = sum(len(b) for b, _ in stream.batches(torch.Generator().manual_seed(epoch), 100))
        assert rows == 1000
    assert read == [0, 1, 2, 3]


def test_a_missing_part_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ShopguideError, match=r"nowhere\.parquet: not found"):
        parts_of([tmp_path / "nowhere.parquet"])


def test_read_in_order_a_sorted_set_keeps_each_moment_group_in_one_chunk(tmp_path: Path) -> None:
    frame = _frame(3000, seed=7)
    stream = replace(_stream(frame, tmp_path / "set.parquet", 128, buffer_rows=10), sort_by="t0")
    chunks = list(stream.chunks())
    assert sum(len(c) for c in chunks) == 3000
    assert len(chunks) > 10
    groups = np.concatenate([c.group.numpy() for c in chunks])
    assert len(np.unique(groups)) == len(np.unique(moment_groups(frame)))


def test_the_reader_thread_hands_over_every_item_and_its_errors() -> None:
    assert list(_prefetched(iter(range(50)))) == list(range(50))

    def failing():
        yield 1
        raise ShopguideError("part 3: unreadable")

    with pytest.raises(ShopguideError, match="part 3: unreadable"):
        list(_prefetched(failing()))
    endless = _prefetched(itertools.count())
    assert next(endless) == 0
    endless.close()  # stops the thread; nothing hangs
    assert not [t for t in threading.enumerate() if t.name == "training-set reader"]
