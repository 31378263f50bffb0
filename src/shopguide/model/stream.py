"""The training set as a stream of Parquet row groups, for data larger than memory.

A `TensorStream` names the row groups ("parts") of one or more Parquet files and a rule that
keeps some of each part's rows; it reads a part at a time, so memory holds one part plus the
shuffle buffer, whatever the file's size. An epoch reads the parts in a random order (each
process of a `torchrun` its own share of them), fills a buffer of `buffer_rows` rows, shuffles
it (keeping each moment group's rows together when a listwise loss needs them) and cuts
batches from it; where a core is free, a background thread reads and converts the next parts
while the model trains. Where every kept row fits in the buffer it is read once and kept, and
an epoch is the in-memory engine's: one random order over all rows.

`TimeCut` is `tensors.time_split`'s rule without the sort, so the stream's fit and validation
rows are exactly the in-memory split's.
"""

from __future__ import annotations

import itertools
import os
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import torch

from shopguide.errors import ShopguideError
from shopguide.model.tensors import Tensors

# (part index, the part's rows) -> the rows it keeps, labels and flags in place
Select = Callable[[int, pd.DataFrame], pd.DataFrame]
Convert = Callable[[pd.DataFrame], Tensors]


@dataclass(frozen=True)
class Part:
    file: int
    group: int  # the row group within the file


def parts_of(files: Sequence[Path]) -> list[Part]:
    """Every row group of `files`, in file order; a missing file is an error naming it."""
    out = []
    for index, path in enumerate(files):
        if not Path(path).is_file():
            raise ShopguideError(f"{path}: not found (run `shopguide features` first)")
        groups = pq.ParquetFile(path).num_row_groups
        out += [Part(index, g) for g in range(groups)]
    return out


def read_parts(
    files: Sequence[Path], parts: Iterable[Part], columns: Sequence[str] | None = None
) -> Iterator[pd.DataFrame]:
    """Each of `parts` as a frame (only `columns`, when given); each file is opened once, as
    a file of many row groups has a large footer."""
    opened: dict[int, pq.ParquetFile] = {}
    for part in parts:
        if part.file not in opened:
            opened[part.file] = pq.ParquetFile(files[part.file])
        table = opened[part.file].read_row_group(
            part.group, columns=None if columns is None else list(columns)
        )
        yield table.to_pandas()


@dataclass(frozen=True)
class TimeCut:
    """The last `fraction` of rows by t0 are validation rows, ties at the cut broken by stream
    order: what a stable sort by t0 and a cut at row `int(rows * (1 - fraction))` gives."""

    t0: int  # the first validation moment
    ties_in_fit: int  # rows at moment `t0` that are fit rows (the first ones in stream order)

    @classmethod
    def of(cls, moments: Iterable[np.ndarray], fraction: float) -> TimeCut:
        """The cut over every part's `moments`; memory grows with the distinct moments (at
        most one per second of the data's span), not with the rows."""
        values, counts = np.zeros(0, np.int64), np.zeros(0, np.int64)
        for t0 in moments:
            v, c = np.unique(np.asarray(t0, np.int64), return_counts=True)
            merged, inverse = np.unique(np.r_[values, v], return_inverse=True)
            values, counts = merged, np.bincount(inverse, np.r_[counts, c]).astype(np.int64)
        rows = int(counts.sum())
        cut = int(rows * (1 - fraction))
        if cut >= rows:
            return cls(t0=int(values[-1]) + 1 if rows else 0, ties_in_fit=0)
        before = np.cumsum(counts) - counts  # rows before each distinct moment
        at = int(np.searchsorted(before, cut, side="right")) - 1
        return cls(t0=int(values[at]), ties_in_fit=cut - int(before[at]))

    def fit_rows(self, t0: np.ndarray, ties_before: int) -> np.ndarray:
        """(rows,) bool: which of a part's rows are fit rows, given how many rows at the cut's
        moment came before the part in stream order."""
        tie = t0 == self.t0
        rank = ties_before + np.cumsum(tie) - 1
        return (t0 < self.t0) | (tie & (rank < self.ties_in_fit))


@dataclass(frozen=True)
class TensorStream:
    """The rows `select` keeps of `parts`, read a part at a time and converted by `convert`.
    `rows` holds each part's kept rows (known from a scan), so the stream's length and every
    process's share are known before an epoch."""

    files: tuple[Path, ...]
    parts: tuple[Part, ...]
    rows: tuple[int, ...]
    select: Select
    columns: tuple[str, ...] | None = None
    convert: Convert | None = None
    buffer_rows: int = 1 << 20
    sort_by: str | None = None  # the order of a set read whole (see `_whole`)
    _cache: list = field(default_factory=list, compare=False, repr=False)

    def __len__(self) -> int:
        return sum(self.rows)

    def converting(self, convert: Convert) -> TensorStream:
        return replace(self, convert=convert, _cache=[])

    def describe(self) -> dict:
        """What a checkpoint of a run on this stream must match to be resumed."""
        return {"parts": len(self.parts), "rows": len(self), "buffer_rows": self.buffer_rows}

    def frames(self, order: Sequence[int] | None = None) -> Iterator[pd.DataFrame]:
        """The kept rows of each part (every part, in file order, unless `order` says)."""
        for _, frame in self._frames(order):
            yield frame

    def _frames(self, order: Sequence[int] | None) -> Iterator[tuple[int, pd.DataFrame]]:
        """(part index, kept rows). Read in file order, the rows at a part's last `sort_by`
        value join the next part of the same file, so that no moment group is cut in two
        where the file is sorted by it."""
        indices = [i for i in (range(len(self.parts)) if order is None else order) if self.rows[i]]
        frames = read_parts(self.files, (self.parts[i] for i in indices), self.columns)
        carry: tuple[int, pd.DataFrame] | None = None
        for index, frame in zip(indices, frames, strict=True):
            kept = self.select(index, frame)
            if order is not None or self.sort_by is None:
                yield index, kept
                continue
            if carry is not None:
                if self.parts[carry[0]].file == self.parts[index].file:
                    kept = pd.concat([carry[1], kept], ignore_index=True)
                else:
                    yield carry
            key = kept[self.sort_by]
            tail = (key == key.iloc[-1]).to_numpy() if len(kept) else np.zeros(0, bool)
            carry = (index, kept[tail])
            yield index, kept[~tail]
        if carry is not None:
            yield carry

    def chunks(self, order: Sequence[int] | None = None) -> Iterator[Tensors]:
        """Each part's kept rows as tensors, group ids made unique across chunks (the whole
        set at once where it was kept)."""
        if order is None and self._cache:
            yield from self._cache
            return
        number = 0
        for _, frame in self._frames(order):
            if len(frame):
                chunk = self._converted(frame)
                yield replace(chunk, group=chunk.group + (number << 32))
                number += 1

    def _converted(self, frame: pd.DataFrame) -> Tensors:
        if self.convert is None:
            raise ShopguideError("stream: no conversion to tensors set (converting())")
        return self.convert(frame)

    def targets(self) -> Tensors:
        """Every kept row's labels, user and group, the inputs left empty: what metrics need
        (tens of bytes a row, kept in memory)."""
        parts = [
            Tensors(
                c.user, c.user[:0], c.user[:0], c.dense[:0], c.sequence[:0], c.labels, c.group,
                c.pointwise, c.codes[:0], c.bags[:0],
            )
            for c in self.chunks()
        ]  # fmt: skip
        return _cat(parts)

    def head(self, rows: int) -> Tensors:
        """The first `rows` kept rows (a probe)."""
        taken, count = [], 0
        for chunk in self.chunks():
            taken.append(chunk.rows(slice(0, rows - count)))
            count += len(taken[-1])
            if count >= rows:
                break
        return _cat(taken)

    def _whole(self) -> Tensors | None:
        """Every kept row, read once and kept, when they fit in the buffer: converted as one
        table (in `sort_by`'s order, as the in-memory path orders it), so the rows, their
        groups and the epochs are the in-memory path's."""
        if len(self) > self.buffer_rows:
            return None
        if not self._cache:
            frame = pd.concat(list(self.frames()), ignore_index=True)
            if self.sort_by is not None:
                frame = frame.sort_values(self.sort_by, kind="stable")
            self._cache.append(self._converted(frame))
        return self._cache[0]

    def batches(
        self,
        generator: torch.Generator,
        batch_size: int,
        rank: int = 0,
        size: int = 1,
        grouped: bool = False,
    ) -> Iterator[tuple[Tensors, int]]:
        """One epoch of (batch, rows it stands for across processes), read ahead by a thread
        where a core is free for it.
        Each of `size` processes reads every `size`-th part of a random part order and takes
        batches of `batch_size // size` rows; all take the same number of steps."""
        batches = self._batches(generator, batch_size, rank, size, grouped)
        # A reader thread only where a core is free for it: on 2 cores beside torch's 2
        # threads it cost 43% of the samples/s, reading in turn with the steps 14%.
        if (os.cpu_count() or 1) > torch.get_num_threads():
            return _prefetched(batches)
        return batches

    def _batches(
        self, generator: torch.Generator, batch_size: int, rank: int, size: int, grouped: bool
    ) -> Iterator[tuple[Tensors, int]]:
        whole = self._whole() if size == 1 else None
        if whole is not None:  # the in-memory engine's epoch
            yield from memory_batches(whole, generator, batch_size, grouped=grouped)
            return
        local = max(batch_size // size, 1)
        order = torch.randperm(len(self.parts), generator=generator).tolist()
        shares = [order[r::size] for r in range(size)]
        totals = [sum(self.rows[i] for i in share) for share in shares]
        steps = min(-(-total // local) for total in totals)
        batches = _buffered(
            self.chunks(shares[rank]), generator, local, self.buffer_rows, grouped, totals[rank]
        )
        for batch in itertools.islice(batches, steps):
            yield batch, len(batch) * size


def _cat(parts: list[Tensors]) -> Tensors:
    if len(parts) == 1:
        return parts[0]
    fields = zip(*(vars(p).values() for p in parts), strict=True)
    return Tensors(*(torch.cat(list(f)) for f in fields))


@dataclass(frozen=True)
class GroupIndex:
    """Rows sorted by group, and where each group starts: what `grouped_order` permutes."""

    rows: torch.Tensor  # (rows,) row indices in group order
    starts: torch.Tensor  # (groups,)
    sizes: torch.Tensor  # (groups,)

    @classmethod
    def of(cls, group: torch.Tensor) -> GroupIndex:
        rows = torch.argsort(group, stable=True)
        _, sizes = torch.unique_consecutive(group[rows], return_counts=True)
        return cls(rows, torch.cumsum(sizes, 0) - sizes, sizes)


def grouped_order(index: GroupIndex, generator: torch.Generator) -> torch.Tensor:
    """A random order of the rows that keeps each group's rows together (the groups shuffled),
    so that batches cut from it hold whole groups but at their edges."""
    perm = torch.randperm(len(index.sizes), generator=generator)
    sizes, starts = index.sizes[perm], index.starts[perm]
    offsets = torch.arange(int(sizes.sum())) - torch.repeat_interleave(
        torch.cumsum(sizes, 0) - sizes, sizes
    )
    return index.rows[torch.repeat_interleave(starts, sizes) + offsets]


def _order(group: torch.Tensor, generator: torch.Generator, grouped: bool) -> torch.Tensor:
    """A random order of rows with these groups, each group's rows together when `grouped`."""
    if grouped:
        return grouped_order(GroupIndex.of(group), generator)
    return torch.randperm(len(group), generator=generator)


def _shuffled(data: Tensors, generator: torch.Generator, grouped: bool) -> Tensors:
    """`data`'s rows in a random order, each group's rows together when `grouped`."""
    return data.take(_order(data.group.cpu(), generator, grouped).to(data.user.device))


def memory_batches(
    data: Tensors,
    generator: torch.Generator,
    batch_size: int,
    rank: int = 0,
    size: int = 1,
    grouped: bool = False,
) -> Iterator[tuple[Tensors, int]]:
    """One epoch over tensors held whole: one random order over every row (groups kept
    together when `grouped`), each batch split across the `size` processes by row."""
    shuffled = _shuffled(data, generator, grouped)
    for begin in range(0, len(data), batch_size):
        rows = min(batch_size, len(data) - begin)
        if rows < size:
            continue  # every process must take the same number of steps
        yield shuffled.rows(slice(begin + rank, begin + batch_size, size)), rows


_GROUP = [f.name for f in fields(Tensors)].index("group")


class _ShuffleBuffer:
    """Rows held in tensors allocated once (grown only for a chunk larger than the room
    left), so a fill costs one buffer and the chunk being added, not the copies a
    concatenation and a gather of the whole would make."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.fields: list[torch.Tensor] = []
        self.held = 0

    def add(self, chunk: Tensors) -> None:
        rows = len(chunk)
        values = list(vars(chunk).values())
        if not self.fields:
            self.fields = [t.new_empty((self.capacity, *t.shape[1:])) for t in values]
        pairs = zip(self.fields, values, strict=True)
        if self.held + rows > self.capacity:
            self.capacity = self.held + rows
            self.fields = [torch.cat([f[: self.held], t]) for f, t in pairs]
        else:
            for f, t in pairs:
                f[self.held : self.held + rows] = t
        self.held += rows

    def shuffle(self, generator: torch.Generator, grouped: bool) -> None:
        """The held rows in a random order (each group's rows together when `grouped`), one
        field at a time."""
        order = _order(self.fields[_GROUP][: self.held], generator, grouped)
        for f in self.fields:
            f[: self.held] = f[: self.held][order]

    def batches(self, rows: int, batch_size: int) -> Iterator[Tensors]:
        """The first `rows` held rows as batches (copies: a batch must not keep the buffer
        alive), the rest moved to the front."""
        for begin in range(0, rows, batch_size):
            end = min(begin + batch_size, rows)
            yield Tensors(*(f[begin:end].clone() for f in self.fields))
        rest = self.held - rows
        for f in self.fields:
            f[:rest] = f[rows : self.held].clone()
        self.held = rest


def _buffered(
    chunks: Iterator[Tensors],
    generator: torch.Generator,
    batch_size: int,
    buffer_rows: int,
    grouped: bool,
    total_rows: int,
) -> Iterator[Tensors]:
    """Batches of `chunks` (`total_rows` rows in all) from a shuffle buffer of at least
    `buffer_rows` rows. Whenever it fills it is shuffled and its first half (in whole batches)
    is cut into batches; the other half stays to mix with the next parts read, so rows of
    parts read far apart in the epoch (in a file sorted by time, far apart in time) share
    batches, as they would in a global shuffle. What is left at the end is shuffled and cut,
    the last batch possibly short."""
    size = max(buffer_rows, batch_size)
    buffer = _ShuffleBuffer(min(size + size // 8, total_rows))
    for chunk in chunks:
        buffer.add(chunk)
        del chunk
        if buffer.held < size:
            continue
        buffer.shuffle(generator, grouped)
        emit = max(buffer.held // 2 // batch_size, 1) * batch_size
        yield from buffer.batches(emit, batch_size)
    if buffer.held:
        buffer.shuffle(generator, grouped)
        yield from buffer.batches(buffer.held, batch_size)


_DONE = object()


def _prefetched(items: Iterator, depth: int = 2) -> Iterator:
    """`items`, produced by a background thread up to `depth` ahead (Parquet decoding and numpy
    release the GIL, so reading overlaps training); its errors are raised here, and closing
    the iterator stops the thread."""
    ready: queue.Queue = queue.Queue(depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        ready.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            ready.put(_DONE)
        except BaseException as exc:  # handed to the consumer, which raises it
            ready.put(exc)

    thread = threading.Thread(target=produce, daemon=True, name="training-set reader")
    thread.start()
    try:
        while (item := ready.get()) is not _DONE:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():
            try:
                ready.get_nowait()
            except queue.Empty:
                thread.join(0.05)
