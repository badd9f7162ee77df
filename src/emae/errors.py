"""Errors that reach the user as one clear line (the CLI prints them without a traceback)."""


class EmaeError(Exception):
    """Base class: the message is the whole story."""


class ConfigError(EmaeError, ValueError):
    """A configuration value or combination that cannot work."""


class DataError(EmaeError):
    """Missing, empty or unreadable data."""


class CheckpointError(EmaeError):
    """A checkpoint that cannot be found, read or matched to the model."""


class TrainingError(EmaeError):
    """Training cannot go on (e.g. too many consecutive non-finite steps); names the step and the last good checkpoint."""


class UnsafeCheckpointError(CheckpointError):
    """A file that only a full unpickle can read (which can run code from it); it loads with ``--trust-checkpoint``."""


class OutputError(EmaeError):
    """Output that cannot be written: a full disk, a read-only or forbidden folder; names the file."""
