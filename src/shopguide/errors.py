"""Errors that end a step with a clear message instead of a traceback."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

from shopguide.logs import setup_logging

T = TypeVar("T")


class ShopguideError(Exception):
    """A problem with the user's input or settings; the message names the file, row or field."""

    exit_code = 2


class GateRefused(ShopguideError):
    """The evaluation gate refused the candidate; the champion stays as it is."""

    exit_code = 3


def exit_on_error(func: Callable[..., T], *args: object, **kwargs: object) -> T:
    """Run a command (the CLI's steps, the benchmark scripts) with logging set up; a
    ShopguideError ends the process with its message and exit code, not a traceback."""
    setup_logging()
    try:
        return func(*args, **kwargs)
    except ShopguideError as exc:
        logging.getLogger("shopguide").error("%s", exc)
        raise SystemExit(exc.exit_code) from None
