"""Error types. Each carries a one-line, human-readable message; the CLI prints it as
``error: ...`` and shows a traceback only with ``--debug``."""
from __future__ import annotations


class QfmiqmError(Exception):
    """Base of every error meant for a user rather than a developer."""

    exit_code = 1


class UsageError(QfmiqmError):
    """The user asked for something that does not exist or cannot be combined (exit 2)."""

    exit_code = 2


class ImageError(QfmiqmError):
    """One input image could not be read or used. Batch jobs report it and go on."""


class WeightsError(QfmiqmError):
    """A weights file is missing, corrupted, unsafe to load or does not fit the model."""

    exit_code = 2
