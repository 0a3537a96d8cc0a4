"""User-facing errors: a mistake in a config, a path or a data file, or a fault of the world around a run.

The command line turns a ``UserError`` into one line on stderr and exit status 2, a ``WorldError`` (and an
``OSError``: disk full, permission denied) into one line and exit status 1, never a traceback; anything else
is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A problem the user can fix (bad key, bad value, missing file); printed as one line."""


class ConfigError(UserError):
    """A config key or value is invalid; the message names its full dotted path."""


class WorldError(Exception):
    """A fault outside the code and the config (a measuring child that died, a damaged file written by
    something else); printed as one line, with what was recorded before it kept."""
