"""Atomic writes: outputs are staged beside their destination and renamed into place only when complete.

An error, a cancel or Ctrl-C therefore never leaves a partial file where a user expects a result.
`staged_outputs` is the one multi-output writer (files and folders, all or none); `atomic_file` /
`atomic_write_text` are its one-file shorthands and `commit_folder` swaps a finished folder into place.
Volumes go through `napari_medgen.core.io.write_volume` / `write_outputs`, which build on these.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

from napari_medgen.errors import CorruptFileError, OutputPathError

#: suffix of every staging folder (hidden, beside its destination)
TMP_SUFFIX = ".medgen-tmp"


def create_parents(dest: Path) -> list[Path]:
    """Create the missing parent folders of ``dest``; return them innermost first (for `remove_empty`)."""
    created: list[Path] = []
    parent = dest.parent
    while not parent.exists():
        created.append(parent)
        parent = parent.parent
    for folder in reversed(created):
        folder.mkdir(exist_ok=True)
    return created


def remove_empty(folders: Sequence[Path]) -> None:
    """Remove the given folders (innermost first) where they are empty: undoes `create_parents`."""
    for folder in folders:
        with contextlib.suppress(OSError):
            if folder.exists() and not any(folder.iterdir()):
                folder.rmdir()


def commit_folder(staged: Path, dest: Path) -> None:
    """Move a finished folder ``staged`` to ``dest`` (same file system). An existing ``dest`` is swapped out
    only once the new one is in place, and restored if that fails: readers see the old or the new folder."""
    if not dest.exists():
        os.replace(staged, dest)
        return
    backup = dest.parent / f".{dest.name}.{uuid.uuid4().hex[:8]}.old{TMP_SUFFIX}"
    os.replace(dest, backup)
    try:
        os.replace(staged, dest)
    except BaseException:
        os.replace(backup, dest)
        raise
    shutil.rmtree(backup, ignore_errors=True)


def _claim_folder(staged: Path, dest: Path) -> None:
    """Move ``staged`` to ``dest`` only if nothing is there (an empty folder may be taken over): two runs writing
    the same output at the same time must not both report success while the later replaces the earlier."""
    if dest.exists() and not (dest.is_dir() and not any(dest.iterdir())):
        raise FileExistsError(dest)
    try:
        os.rename(staged, dest)  # a non-empty folder that appeared meanwhile makes this fail (ENOTEMPTY)
    except OSError as error:
        if isinstance(error, FileExistsError) or error.errno in (errno.ENOTEMPTY, errno.EEXIST):
            raise FileExistsError(dest) from None
        raise


def _commit_one(staging: Path, dest: Path, replace: bool = True) -> list[Path]:
    """Move what was written as ``staging / dest.name`` into place: a folder is swapped in whole, files (the
    main one plus any side files, e.g. ``.raw`` of an ``.mhd``) are renamed, the main file last so it never
    points at missing data. Returns the paths created."""
    main = staging / dest.name
    if main.is_dir():
        if replace:
            commit_folder(main, dest)
        else:
            _claim_folder(main, dest)
        return [dest]
    names = sorted(os.listdir(staging), key=lambda n: (n == dest.name, n))
    if dest.name not in names:
        raise CorruptFileError(f"Writing {dest} produced no file; nothing was written. Check free disk space.")
    done = []
    for name in names:
        os.replace(staging / name, dest.parent / name)
        done.append(dest.parent / name)
    return done


def output_error(dest: Path, error: OSError) -> OutputPathError:
    """A one-line `OutputPathError` for an `OSError` met while creating or moving ``dest``."""
    reasons = {
        PermissionError: "the folder is not writable (permission denied)",
        NotADirectoryError: "a parent of it is a file, not a folder",
        FileExistsError: "a file of that name is in the way",
        IsADirectoryError: "a folder of that name is in the way",
    }
    reason = next((text for kind, text in reasons.items() if isinstance(error, kind)),
                  error.strerror or str(error))
    return OutputPathError(f"Cannot write {dest}: {reason}. Choose another output path; nothing was written.")


@contextlib.contextmanager
def staged_outputs(paths: Sequence[str | os.PathLike[str]], *, replace: bool = True) -> Iterator[list[Path]]:
    """Write several outputs all or none: yields one temporary path per destination (``<hidden folder>/<name>``,
    write a file or a folder there, plus side files beside it). When the block ends without error every output is
    renamed into place; on any error or Ctrl-C nothing new is left behind (outputs renamed already are removed
    again, new parent folders too) and the error propagates. ``replace=False``: a folder output that exists (not
    empty) when the block ends is an `OutputPathError`, not replaced (another run wrote it meanwhile)."""
    dests = [Path(p).expanduser().absolute() for p in paths]
    created: list[Path] = []
    staging: list[Path] = []
    committed: list[Path] = []
    done = False
    try:
        for dest in dests:
            try:
                created.extend(create_parents(dest))
                folder = dest.parent / f".{dest.name}.{uuid.uuid4().hex[:12]}{TMP_SUFFIX}"
                folder.mkdir()  # not mkdtemp: a folder output is renamed into place and gets the usual permissions
            except OSError as error:
                raise output_error(dest, error) from None
            staging.append(folder)
        yield [folder / dest.name for folder, dest in zip(staging, dests, strict=True)]
        for folder, dest in zip(staging, dests, strict=True):
            try:
                committed.extend(_commit_one(folder, dest, replace))
            except FileExistsError:
                raise OutputPathError(f"{dest} was written by another run while this one was working; this run's "
                                      "result was not written. Choose a new folder, or pass --overwrite.") from None
            except OSError as error:
                raise output_error(dest, error) from None
        done = True
    except BaseException:
        for path in committed:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        raise
    finally:
        for folder in staging:
            shutil.rmtree(folder, ignore_errors=True)
        if not done:
            remove_empty(sorted(set(created), key=lambda p: -len(p.parts)))


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path``, on error it is removed."""
    with staged_outputs([path]) as (tmp,):
        yield tmp


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically and return the path."""
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def _json_default(value: object) -> object:
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def json_text(data: object) -> str:
    """Indented JSON (numpy scalars and arrays, paths allowed) with a final newline: reports and manifests."""
    return json.dumps(data, indent=2, default=_json_default) + "\n"
