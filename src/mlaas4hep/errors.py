"""Exceptions a user can cause, with messages meant to be read by a person.

The CLI prints these as a one-line message (no traceback); library users can
catch :class:`MlaasError` to handle every user-caused problem at once.
"""

from __future__ import annotations


class MlaasError(Exception):
    """Base class of every error caused by user input or the environment."""


class ConfigError(MlaasError, ValueError):
    """A parameter, option or configuration value is invalid."""


class DataError(MlaasError):
    """A file, tree or branch cannot be found or read."""

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path
