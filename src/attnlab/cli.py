"""What every entry point shares: turning a user's mistake into one clear message."""

from __future__ import annotations

import logging
import sys

from .config import ConfigError
from .data.text import CorpusError

log = logging.getLogger("attnlab")
USER_ERRORS = (ConfigError, CorpusError, FileNotFoundError)


def explain_and_exit(err: Exception, what: str = "attnlab") -> None:
    """A user error ends the command with its message (exit 2), not a traceback."""
    log.error("%s: %s", type(err).__name__, err)
    print(f"{what}: error: {err}", file=sys.stderr)
    sys.exit(2)
