"""Errors a user can fix. The CLI prints them as one line and exits with code 2."""


class DialsumError(ValueError):
    """Base for every user-facing error: bad config, bad data, bad run directory."""


class ConfigError(DialsumError):
    """The YAML config or a --set override does not fit the schema."""


class DataError(DialsumError):
    """An input file is missing, unreadable or malformed; the message names file, row and field."""


class RunDirError(DialsumError):
    """A run directory is missing, incomplete or would be overwritten."""


class Interrupted(Exception):
    """Ctrl-C during a long step: the CLI prints this one line (what was interrupted, the command that resumes it)
    and exits 130. Not a DialsumError: nothing was wrong with the input."""
