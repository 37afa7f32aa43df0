"""Exceptions that the CLI turns into a one-line message and an exit code, and the failure
of one video, which travels as data."""

from __future__ import annotations


class LofipipeError(Exception):
    """A problem the user can act on; its message is one line and free of credentials."""

    exit_code = 1


class ConfigError(LofipipeError):
    """A config file or override is invalid; the message names the key."""

    exit_code = 2


class StorageError(LofipipeError):
    """Storage could not be reached, read or written."""


class NotFoundError(StorageError):
    """A folder or file that was asked for is not there."""


class InputError(LofipipeError):
    """An input (video listing, annotation file) cannot be used as given."""


class StrictError(LofipipeError):
    """--strict: the command finished, but some videos failed."""

    exit_code = 3


def one_line(error: BaseException, *, with_type: bool = False, last: bool = False) -> str:
    """One line of an exception's message: the first (or `last`) non-empty one.

    Ray's task errors carry the remote traceback, whose last line is the error itself.
    """
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = (lines[-1] if last else lines[0]) if lines else ""
    if with_type or not text:
        text = f"{type(error).__name__}: {text}".rstrip(": ")
    return text


class VideoFailure(Exception):
    """One video that cannot be used. `reason` is a short code that failures are counted
    by; `message` says what went wrong, in one line.

    Tables keep a failure as one `error` text, `"reason: message"` (`line`), and
    `failure_reason` reads the reason back from such a text.
    """

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason, self.message = reason, message

    @property
    def line(self) -> str:
        return f"{self.reason}: {self.message}"


def failure_reason(line: str) -> str:
    """The reason code of a stored failure line (`VideoFailure.line`)."""
    return line.partition(":")[0]
