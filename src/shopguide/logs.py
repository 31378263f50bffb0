"""Logging and progress bars shared by every step."""

from __future__ import annotations

import contextlib
import logging
import logging.handlers
import os
import queue
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

T = TypeVar("T")
console = Console(stderr=True)


def setup_logging(level: str | None = None) -> None:
    """Route all logs through rich; SHOPGUIDE_LOG_LEVEL overrides the level."""
    level = level or os.environ.get("SHOPGUIDE_LOG_LEVEL", "INFO")
    logging.basicConfig(
        level=level,
        format="%(message)s",
        datefmt="[%X]",
        handlers=[RichHandler(console=console, show_path=False, rich_tracebacks=False)],
        force=True,
    )
    for noisy in ("feast", "great_expectations", "dask", "urllib3", "kfp", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


MAX_LOGGED_CHARS = 2000  # of a record's message, and again of its traceback


def _cap(text: str) -> str:
    if len(text) <= MAX_LOGGED_CHARS:
        return text
    return f"{text[:MAX_LOGGED_CHARS]}... [{len(text) - MAX_LOGGED_CHARS} more characters]"


class _Enqueue(logging.handlers.QueueHandler):
    """Puts records on a bounded queue and nothing else: no formatting (the listener does it),
    never a wait (a full queue drops the record and counts it)."""

    def __init__(self, records: queue.Queue, on_drop: Callable[[], None]) -> None:
        super().__init__(records)
        self.on_drop = on_drop

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        return record  # same process: the listener formats it

    def enqueue(self, record: logging.LogRecord) -> None:
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            self.on_drop()


class _CappedListener(logging.handlers.QueueListener):
    """Formats each record off the caller's thread, message and traceback capped at
    MAX_LOGGED_CHARS each, so no record costs more than a few kilobytes to write."""

    _traceback = logging.Formatter()

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        record.msg, record.args = _cap(record.getMessage()), None
        if record.exc_info and not record.exc_text:
            record.exc_text = self._traceback.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = _cap(record.exc_text)
        if record.stack_info:
            record.stack_info = _cap(record.stack_info)
        return record


@contextlib.contextmanager
def background_logging(
    on_drop: Callable[[], None] = lambda: None, max_queued: int = 10_000
) -> Iterator[None]:
    """Log through a queue: a thread that logs (the model server's event loop) only enqueues
    records; a listener thread formats them, capped, with a plain formatter (rich's is slow on
    long lines) and writes them to stderr. Past `max_queued` waiting records new ones are
    dropped, each reported to `on_drop`."""
    root = logging.getLogger()
    previous = root.handlers[:]
    records: queue.Queue = queue.Queue(max_queued)
    writer = logging.StreamHandler(sys.stderr)
    writer.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    listener = _CappedListener(records, writer)
    root.handlers = [_Enqueue(records, on_drop)]
    listener.start()
    try:
        yield
    finally:
        root.handlers = previous
        listener.stop()


def progress() -> Progress:
    return Progress(
        TextColumn("[bold blue]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=not console.is_terminal,
    )


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    with progress() as bar:
        yield from bar.track(items, total=total, description=description)
