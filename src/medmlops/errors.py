"""Exceptions for user mistakes: the CLI prints their message as one sentence, without a traceback."""

from __future__ import annotations


class UserError(Exception):
    """Something the user can fix (a file, a column, a key); the message names it."""


class DataError(UserError, ValueError):
    """Unreadable, inconsistent or out-of-range data; the message names the file, column or row."""
