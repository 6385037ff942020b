"""Atomic writes: a crash or ``kill -9`` leaves either the old file (or folder) or the new one, never half of one.

Each write goes to a temporary name beside the target, is flushed to disk (``fsync``), and only
then renamed over the target; the folder is fsynced too so that the rename itself is durable.
Without the fsync a power loss shortly after the rename can leave a zero-length file under the
final name on ext4/xfs (the data blocks may be written after the rename's metadata).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def current_umask() -> int:
    """The process umask (reading it means setting it, so it is put straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def fsync_path(path: str | Path) -> None:
    """Flush a file's (or a folder's entries') data to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(folder: Path) -> None:
    """Flush every file under ``folder`` and the folders themselves."""
    for path in sorted(folder.rglob("*")):
        fsync_path(path)
    fsync_path(folder)


@contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; fsync and rename it onto ``target`` only on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    # mkstemp creates the file 0600; give the finished file the permissions open() would have.
    os.chmod(tmp, 0o666 & ~current_umask())
    try:
        yield Path(tmp)
        fsync_path(tmp)
        os.replace(tmp, target)
        fsync_path(target.parent)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def make_ordinary(folder: Path) -> None:
    """Give a folder and its files the permissions of newly created ones (umask).

    ``mkdtemp`` and safetensors' writer create them private (0700/0600), which would surprise
    anyone sharing or serving the folder.
    """
    mask = current_umask()
    folder.chmod(0o777 & ~mask)
    for file in folder.rglob("*"):
        file.chmod((0o777 if file.is_dir() else 0o666) & ~mask)


def replace_folder(new: Path, target: Path) -> None:
    """Flush ``new`` to disk and rename it to ``target``.

    An existing ``target`` is moved aside first and deleted after.
    """
    fsync_tree(new)
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.rename(target, old)
    os.rename(new, target)
    fsync_path(target.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
