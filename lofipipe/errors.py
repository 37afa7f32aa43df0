"""Exceptions that the CLI turns into a one-line message and an exit code."""


class LofipipeError(Exception):
    """A problem the user can act on; its message is one line and free of credentials."""

    exit_code = 1


class ConfigError(LofipipeError):
    """A config file or override is invalid; the message names the key."""

    exit_code = 2


class StorageError(LofipipeError):
    """Storage could not be reached, read or written."""


class InputError(LofipipeError):
    """An input (video listing, annotation file) cannot be used as given."""
