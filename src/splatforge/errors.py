"""Errors raised by splatforge.

Every error a user can cause by their input is a :class:`SplatforgeError`; the CLI prints its
message (which names the file and the problem) and exits with status 2, without a traceback.
"""

from __future__ import annotations

from pathlib import Path


class SplatforgeError(Exception):
    """Base class of the errors splatforge reports to a user."""


class InputError(SplatforgeError):
    """Bad input: a missing, unreadable or malformed file or folder.

    Args:
        path: the offending file or folder (named in the message).
        problem: what is wrong with it.
        hint: optional advice on how to fix it.
    """

    def __init__(self, path: str | Path | None, problem: str, hint: str | None = None):
        self.path = Path(path) if path is not None else None
        self.problem = problem
        self.hint = hint
        msg = f"{self.path}: {problem}" if self.path is not None else problem
        if hint:
            msg += f"\n  hint: {hint}"
        super().__init__(msg)


class ConfigError(SplatforgeError):
    """An invalid configuration value (field name and allowed range in the message)."""


class SfmError(SplatforgeError):
    """Structure-from-motion failed to produce a usable model."""


class StopRequested(KeyboardInterrupt):
    """A job's ``should_stop`` hook asked the pipeline to stop (a cancel, a shutdown, a time
    limit); raised at a stage boundary. Training stops the same way with its own
    :class:`splatforge.train.TrainingInterrupted` (a checkpoint first)."""
