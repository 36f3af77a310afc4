"""Error types that the command-line tools turn into a one-line message and exit code 2.

Why a small hierarchy: these are raised for bad user input (a config field out of its
domain, a data file with the wrong shape), and every CLI catches exactly `UserInputError`,
prints `error: <message>` and exits 2 -- no traceback, nothing half-written. Programming errors
(anything else) still surface with a traceback.
"""

from __future__ import annotations


class UserInputError(ValueError):
    """Bad input from the user; the message is one line that names the field or the file."""


class ConfigError(UserInputError):
    """A configuration value is missing, of the wrong type or outside its domain.

    The message starts with the dotted field name, e.g. ``friction.power: must be > 0, got -1``.
    """

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"{field}: {problem}")


class DataError(UserInputError):
    """A data file is missing, unreadable, or has the wrong shape, dtype or values.

    The message starts with the file path, e.g. ``/data/age.npy: expected 70000 rows, got 12``.
    """

    def __init__(self, path: object, problem: str) -> None:
        self.path = str(path)
        super().__init__(f"{self.path}: {problem}")


class TrainingDiverged(RuntimeError):
    """The loss, drift or generated samples became NaN/inf.

    Raised by the training loop so a run (or a sweep trial) ends cleanly with this reason instead
    of training on garbage; it is not a user-input error.
    """


class SweepStopped(RuntimeError):
    """A sweep ended early because nothing moved (no trial reported within the no-progress
    limit); its summary files are written, the message says why."""
