"""The one way dmf_ray writes a result file or folder: build it beside the target, then rename.

Why: a crash or Ctrl-C halfway through a checkpoint, a translated array or a data folder must
never leave something half-written under the final name, where a resume or a loader would pick
it up. Writing to a hidden sibling and renaming it in place makes the result appear whole or
not at all (a rename within one folder is atomic on POSIX).
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp)`` to create a file or folder at ``tmp`` beside ``path``, then move it to ``path``.

    ``tmp`` does not exist when ``write`` is called, so ``write`` creates it as any file or
    folder the user makes (honouring the umask). If ``write`` raises, ``tmp`` is removed and
    ``path`` is untouched. A folder replaces an existing folder at ``path`` (removed just
    before the rename). Returns ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:12]}"
    try:
        write(tmp)
        if tmp.is_dir() and path.is_dir():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise
    return path
