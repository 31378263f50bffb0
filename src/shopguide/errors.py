"""Errors that end a step with a clear message instead of a traceback."""


class ShopguideError(Exception):
    """A problem with the user's input or settings; the message names the file, row or field."""

    exit_code = 2


class GateRefused(ShopguideError):
    """The evaluation gate refused the candidate; the champion stays as it is."""

    exit_code = 3
