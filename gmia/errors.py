"""The few exceptions gmia raises on purpose. The CLI turns any of them into one clear line.

Every message names the file or value at fault, what was expected, and how to fix it.
"""

__all__ = ["GmiaError", "InputError", "CheckpointError", "ConfigError"]


class GmiaError(Exception):
    """Base class: an error the user can fix (bad input, missing weights, bad option).

    ``reason`` is an optional short summary that names no file and no input value: the only part of an error
    that may reach a public file (a released manifest row). The message itself names the file, for the user.
    """

    def __init__(self, message: str = "", *, reason: str | None = None):
        super().__init__(message)
        self.reason = reason


class InputError(GmiaError):
    """An input file or dataset is missing, unreadable or of the wrong shape."""


class CheckpointError(GmiaError):
    """Weights are missing, corrupt, unsafe, or do not fit the requested network."""


class ConfigError(GmiaError):
    """An option or preset value is invalid."""
