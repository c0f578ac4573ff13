"""What every entry point shares: turning a user's mistake into one clear message."""

from __future__ import annotations

import logging
import sys

from .errors import ConfigError, CorpusError, DiskFullError, NonFiniteLossError

log = logging.getLogger("attnlab")
# A diverged run, or a disk that filled up while training, is not the user's mistake, but it too deserves
# one message (step, checkpoint, fix).
USER_ERRORS = (ConfigError, CorpusError, DiskFullError, FileNotFoundError, NonFiniteLossError)


def explain_and_exit(err: Exception, what: str = "attnlab") -> None:
    """A user error ends the command with its message (exit 2), not a traceback."""
    # Into the run's log file (what went wrong, for later), but said once on the terminal.
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, "%s: %s", (type(err).__name__, err), None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)
    print(f"{what}: error: {err}", file=sys.stderr)
    sys.exit(2)
