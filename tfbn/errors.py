"""Errors caused by the user's input rather than by a bug in tfbn.

The command line catches `UserError` and prints its message with exit status 2
instead of a traceback, so every message must name the problem and the fix.
"""


class UserError(Exception):
    """Base class of errors the user can fix by changing their input."""


class ConfigError(UserError, ValueError):
    """A config file or `--set` override is invalid."""


class DataError(UserError, ValueError):
    """A data set cannot be found, read or split as asked."""
