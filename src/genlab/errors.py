"""Typed errors. Every user-facing failure is a GenlabError whose message is one line
naming the problem and the fix; the CLI prints it and exits non-zero without a traceback."""


class GenlabError(Exception):
    """Base class of all errors genlab reports to users."""

    exit_code = 2


class ConfigError(GenlabError):
    """Unknown preset or key, wrong type, inconsistent settings."""


class DataError(GenlabError):
    """Missing, unreadable or malformed data."""


class ShapeError(GenlabError):
    """A tensor or array has the wrong shape or dtype."""


class CheckpointError(GenlabError):
    """A checkpoint or run directory is missing, corrupt or truncated."""


class RunInUseError(GenlabError):
    """Another process owns the run directory."""


class TrainingDiverged(GenlabError):
    """A loss became NaN or infinite."""

    exit_code = 3
