"""Logging and progress bars shared by every step."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
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
