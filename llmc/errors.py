"""User-facing errors: a mistake in a config, a path or a data file.

The command line turns a ``UserError`` into one line on stderr and exit status 2, never a traceback;
anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A problem the user can fix (bad key, bad value, missing file); printed as one line."""


class ConfigError(UserError):
    """A config key or value is invalid; the message names its full dotted path."""
