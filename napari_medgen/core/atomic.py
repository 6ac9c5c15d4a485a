"""Atomic file writes: a temp file beside the destination, renamed into place only when complete.

An error, a cancel or Ctrl-C therefore never leaves a partial file where a user expects a result.
(Volumes and DICOM folders go through `napari_medgen.core.io`, which stages whole folders the same way.)
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path``, on error it is removed."""
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically and return the path."""
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def commit_folder(staged: Path, dest: Path) -> None:
    """Move a finished folder ``staged`` to ``dest`` (same file system). An existing ``dest`` is swapped out
    only once the new one is in place, and restored if that fails: readers see the old or the new folder."""
    if not dest.exists():
        os.replace(staged, dest)
        return
    backup = dest.parent / f".{dest.name}.{uuid.uuid4().hex[:8]}.old.medgen-tmp"
    os.replace(dest, backup)
    try:
        os.replace(staged, dest)
    except BaseException:
        os.replace(backup, dest)
        raise
    shutil.rmtree(backup, ignore_errors=True)
