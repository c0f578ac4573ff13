"""Errors that entry points report as one message. Kept free of torch and Lightning imports, so a
command that fails early (a typo, a missing file) says so without loading the training stack."""

from __future__ import annotations


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/inf loss or gradient; the message names the step and the checkpoint."""
