"""dmf_ray.files.atomic_write: the result appears whole or not at all."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dmf_ray.files import atomic_write


def test_a_file_appears_whole_and_replaces_the_old_one(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "out.bin"
    assert atomic_write(target, lambda tmp: tmp.write_bytes(b"first")) == target
    atomic_write(target, lambda tmp: tmp.write_bytes(b"second"))
    assert target.read_bytes() == b"second" and os.listdir(target.parent) == ["out.bin"]
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # like any file the user writes, not mkstemp's 0600


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")

    def half_then_crash(tmp: Path) -> None:
        tmp.write_bytes(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, half_then_crash)
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["out.bin"]


def test_a_folder_replaces_a_folder_or_leaves_it_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "folder"
    target.mkdir()
    (target / "old.txt").write_text("old")

    def folder(tmp: Path, fail: bool = False) -> None:
        tmp.mkdir()
        (tmp / "new.txt").write_text("new")
        if fail:
            raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_write(target, lambda tmp: folder(tmp, fail=True))
    assert os.listdir(tmp_path) == ["folder"] and os.listdir(target) == ["old.txt"]
    atomic_write(target, folder)
    assert os.listdir(tmp_path) == ["folder"] and os.listdir(target) == ["new.txt"]
