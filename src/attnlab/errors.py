"""Every error class of attnlab, in one place. Kept free of torch, Lightning, Hydra and of the rest
of attnlab, so any layer (data/ too) may raise them, and a command that fails early (a typo, a
missing file) says so without loading the training stack. The entry points turn the user's
mistakes (cli.USER_ERRORS) into one message and exit status 2."""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration a user wrote that cannot work; the message names the key."""


class PreflightError(ConfigError):
    """The environment cannot hold the run (output folder, disk space) or the data cannot fit."""


class CorpusError(ValueError):
    """A problem with the user's corpus files; the message names the file (and line)."""


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; the message names the file and what to do."""


class RefError(ValueError):
    """`attnlab-report --ref` names no row."""


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/inf loss or gradient; the message names the step and the checkpoint."""


class DiskFullError(RuntimeError):
    """No space left while training; the message names the step and the checkpoint kept."""


class Interrupted(BaseException):
    """Ctrl-C or SIGTERM ended `fit`. A BaseException (like KeyboardInterrupt), not a SystemExit:
    code that records a failed sweep job and goes on to the next must let this one through."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code
