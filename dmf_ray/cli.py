"""What every ``python -m dmf_ray.<command>`` shares: one-line errors and their exit codes.

Why: the brief's contract for bad input -- one line naming the field or file, exit 2, no
traceback, nothing written -- must hold the same way in every command, including argparse's own
usage errors, which would otherwise print a usage block.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, NoReturn

from dmf_ray.errors import TrainingDiverged, UserInputError


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors raise UserInputError instead of printing usage and exiting."""

    def error(self, message: str) -> NoReturn:  # type: ignore[override]
        raise UserInputError(f"arguments: {message}")


def run_cli(command: Callable[[], int | None]) -> int:
    """Run ``command``: its return code (0 if None), 2 for bad input, 1 for a diverged run."""
    try:
        code = command()
    except UserInputError as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except TrainingDiverged as exc:
        print(f"error: training diverged: {exc}", file=sys.stderr)
        return 1
    return 0 if code is None else code
