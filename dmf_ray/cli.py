"""What every ``python -m dmf_ray.<command>`` shares: one-line errors and their exit codes.

Why: the brief's contract for bad input -- one line naming the field or file, exit 2, no
traceback, nothing written -- must hold the same way in every command, including argparse's own
usage errors, which would otherwise print a usage block.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, NoReturn

from dmf_ray.errors import ConfigError, DataError, SweepStopped, TrainingDiverged, UserInputError


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors raise UserInputError instead of printing usage and exiting."""

    def error(self, message: str) -> NoReturn:  # type: ignore[override]
        raise UserInputError(f"arguments: {message}")


def check_output_folder(out_dir: Path, flag: str | None = None) -> None:
    """UserInputError unless ``out_dir`` is, or can be made, a folder: no file in its place or above it.

    Checked before anything runs, so a long run does not fail at its first write. The message
    names the file in the way; given the command's ``flag`` (e.g. ``--out``) it starts with that.
    """
    for path in (out_dir, *out_dir.parents):
        if path.exists():
            if not path.is_dir():
                if flag is not None:
                    raise ConfigError(flag, f"{path} is a file, so the folder {out_dir} cannot be created")
                raise DataError(path, f"is a file, so the output folder {out_dir} cannot be created")
            return


def run_cli(command: Callable[[], int | None]) -> int:
    """Run ``command``: its return code (0 if None), 2 for bad input, 1 for a diverged run or a stopped sweep."""
    try:
        code = command()
    except UserInputError as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except TrainingDiverged as exc:
        print(f"error: training diverged: {exc}", file=sys.stderr)
        return 1
    except SweepStopped as exc:
        print(f"error: sweep stopped: {exc}", file=sys.stderr)
        return 1
    return 0 if code is None else code
