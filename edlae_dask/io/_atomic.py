"""Publishing a directory atomically: the one place stores are moved into place.

A store is written in full under a temporary name next to its target and then
renamed, so a reader sees the previous complete store or the new one. Replacing
an existing store takes two renames (the old one aside, the new one in): a reader
opening the path between them finds nothing, never a partial store.

Local directories only: object storage has no rename, and stores under fsspec
URLs are published by a marker written last and a pointer switched with one PUT
(see :mod:`edlae_dask.io._fs` and each store's module).
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable


def fsync_dir(path) -> None:
    """Make a rename inside ``path`` durable (best effort: not every filesystem allows it)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def replace_dir(work, target, *, check_replaceable: Callable[[str], object]) -> None:
    """Move the complete directory ``work`` to ``target``, replacing what is there.

    ``check_replaceable(target)`` runs just before an existing ``target`` is moved
    aside and must raise if it may not be replaced (something appeared meanwhile
    that is not ours). The old directory is deleted only after the new one is in place.
    """
    work, target = os.fspath(work), os.path.abspath(os.fspath(target))
    parent, name = os.path.split(target)
    if not os.path.lexists(target):
        os.rename(work, target)
        fsync_dir(parent)
        return
    check_replaceable(target)
    aside = os.path.join(parent, f".{name}.old-{uuid.uuid4().hex}")
    os.rename(target, aside)
    try:
        os.rename(work, target)
    except BaseException:
        os.rename(aside, target)
        raise
    fsync_dir(parent)
    shutil.rmtree(aside, ignore_errors=True)
