"""Versioned stores: the publishing rules every edlae-dask store follows, in one place.

The four stores (interactions, factors, recommendations, checkpoints) each hold
zarr v3 groups whose attributes say what they are, and publish new content so that
a reader sees the previous complete content or the new one, never a part:

- **Format.** A group's ``format`` and ``format_version`` attributes name its kind
  (:class:`StoreFormat`); a reader checks both before anything else
  (:func:`check_format`), so a foreign store or one of another version is refused
  with the store's own advice on what to do.
- **Complete marker.** A group's ``complete`` attribute is written last
  (:func:`mark_complete`); a group without it is never read (:func:`is_complete`,
  ``check_format(..., complete=True)``).
- **Local publish.** In a local directory a store is written under a hidden
  temporary name and renamed into place (:func:`move_into_place`); a small object
  such as a pointer is written to a temporary file and ``os.replace``-d
  (:func:`write_object`). Both are fsynced.
- **Pointer publish.** Object storage has no rename, so a store there is a folder
  of versions and a pointer, one small object naming the published one
  (:class:`Versions`: ``LATEST`` + ``versions/`` for factors and recommendations,
  ``CURRENT`` + ``attempts/`` for interactions). Switching it is one PUT, atomic
  per object in S3 and GCS (:meth:`Versions.publish`).
- **Pruning.** After a switch, old versions are deleted by one policy stated in one
  call (:meth:`Versions.prune`): how many complete ones to keep, whether to keep the
  one the pointer named before (a reader may still be reading it), whether only
  versions older than the kept ones go, and whether only those nothing has written
  to for a while (object storage has no locks).
- **Claims and leftovers (local).** A run writing a local store holds a claim, a
  ``flock`` on the sibling ``.NAME.lock`` (:func:`claim`): shared by runs that may
  write at once, exclusive for one that must be alone. Only a run that is provably
  alone (it gets the lock exclusively) removes what killed runs left (temporary
  directories, a store moved aside by :func:`move_into_place`, which it renames
  back when nothing took its place: :func:`recover_aside`). Lock files are opened
  without following symbolic links (:func:`open_lock_file`).

Names and layouts on disk are each store's own (see its module); this module only
applies the rules.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import logging
import os
import re
import shutil
import stat
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from edlae_dask._version import __version__
from edlae_dask.errors import OutputExistsError, ParameterError, StoreFormatError, os_error
from edlae_dask.io._fs import Location, group_attrs, is_url

__all__ = [
    "StoreFormat",
    "Versions",
    "aside_pattern",
    "bad_pointer",
    "by_created",
    "by_name",
    "check_format",
    "check_new_file",
    "claim",
    "fsync_dir",
    "is_complete",
    "lock_path",
    "mark_complete",
    "move_into_place",
    "new_file",
    "open_group",
    "open_lock_file",
    "read_pointer",
    "recover_aside",
    "remove_leftovers",
    "write_object",
    "write_new_file",
]

log = logging.getLogger("edlae_dask.io")


# --------------------------------------------------------------------------- format and completeness


@dataclass(frozen=True)
class StoreFormat:
    """What a store's ``format`` and ``format_version`` attributes must say, and the advice when they do not.

    Attributes
    ----------
    name : str
        The ``format`` attribute (``"edlae-dask/factors"``).
    version : int
        The ``format_version`` this code reads and writes.
    what : str
        The store's kind in messages (``"factor store"``).
    foreign_fix : str
        What to do about a group of another format (``"Pass the --out of `edlae-dask train`"``).
    version_fix : str
        What to do about a store of another format version.
    incomplete_fix : str
        What to do about a store without its ``complete`` marker.
    access : str
        What this code does with such a store, for the version message: ``"reads"``, or
        ``"reads and writes"`` for a store that runs write into in place.
    """

    name: str
    version: int
    what: str
    foreign_fix: str = ""
    version_fix: str = ""
    incomplete_fix: str = ""
    access: str = "reads"

    def is_ours(self, attrs: dict | None) -> bool:
        """Whether ``attrs`` (a group's attributes, or None for no group) name this format (any version)."""
        return attrs is not None and attrs.get("format") == self.name

    def is_readable(self, attrs: dict | None) -> bool:
        """Whether ``attrs`` name this format and this code's format version."""
        return self.is_ours(attrs) and attrs.get("format_version") == self.version

    def stamp(self, attrs: dict | None = None, **more) -> dict:
        """``attrs`` and ``more`` plus this format, its version, the creation time and the code version."""
        out = dict(attrs or {}, **more)
        out.update(format=self.name, format_version=self.version,
                   created=_dt.datetime.now(_dt.timezone.utc).isoformat(), code_version=__version__)
        return out

    @property
    def _a_what(self) -> str:
        return ("an " if self.what[:1].lower() in "aeiou" else "a ") + self.what


def _sentence(problem: str, fix: str) -> str:
    return f"{problem}. {fix}" if fix else problem


def check_format(attrs: dict | None, path, fmt: StoreFormat, *, complete: bool = False) -> dict:
    """Return ``attrs`` if they are those of a store of format ``fmt`` this code reads.

    The format name is checked first, then the version (nothing else means anything
    for another format), then, with ``complete``, the ``complete`` marker.

    Parameters
    ----------
    attrs : dict or None
        The group's attributes; None when there is no group.
    path : str or Location
        Where the group is, for the message.
    fmt : StoreFormat
        The expected format, and the store's advice.
    complete : bool, default=False
        Also require the ``complete`` marker.

    Raises
    ------
    StoreFormatError
        Another format (or no group), another ``format_version``, or no ``complete``
        marker; the message names the path and what to do.
    """
    if not fmt.is_ours(attrs):
        found = ("there is no zarr v3 group there" if attrs is None
                 else f"its 'format' attribute is {attrs.get('format')!r}, expected {fmt.name!r}")
        raise StoreFormatError(_sentence(f"{path} is not an edlae-dask {fmt.what}: {found}", fmt.foreign_fix))
    found = attrs.get("format_version")
    if found != fmt.version:
        age = ""
        if isinstance(found, int) and not isinstance(found, bool):
            # which way it differs tells whether to upgrade edlae-dask or to rewrite the store
            age = f" (format version {found} is from a {'newer' if found > fmt.version else 'older'} edlae-dask)"
        raise StoreFormatError(_sentence(
            f"{path} is {fmt._a_what} of format_version {found!r}, but this edlae-dask ({__version__}) "
            f"{fmt.access} format_version {fmt.version} only{age}", fmt.version_fix))
    if complete and not is_complete(attrs):
        raise StoreFormatError(_sentence(
            f"{path} is an incomplete {fmt.what} (no 'complete' marker): its writer was interrupted or is still "
            "writing", fmt.incomplete_fix))
    return attrs


def open_group(loc: Location, fmt: StoreFormat):
    """The zarr v3 group at ``loc`` for reading; :class:`StoreFormatError` if there is none.

    Only opens it: :func:`check_format` its attributes before reading anything else.
    """
    try:
        return loc.open_group("r")
    except Exception as exc:  # zarr raises several types (GroupNotFoundError, ContainsArrayError, JSON errors)
        raise StoreFormatError(_sentence(
            f"{loc} is not a zarr v3 group, so not {fmt._a_what} ({type(exc).__name__}: {exc})", fmt.foreign_fix
        )) from exc


def is_complete(attrs: dict | None) -> bool:
    """Whether a group's attributes carry the ``complete`` marker (None: no group, not complete)."""
    return attrs is not None and attrs.get("complete") is True


def mark_complete(group, attrs: dict) -> None:
    """Set ``attrs`` on the zarr ``group``, then its ``complete`` marker, last.

    Call it when everything else of the group is written: a reader takes a group
    with the marker as whole, and never reads one without it.
    """
    group.attrs.update(attrs)
    group.attrs["complete"] = True  # a separate, later write: the marker never lands before the attributes


# --------------------------------------------------------------------------- local atomic writes


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


def move_into_place(work, target, *, check_replaceable: Callable[[str], object] | None = None) -> None:
    """Move the complete local directory ``work`` to ``target``, replacing what is there.

    Replacing takes two renames (the old one aside, the new one in): a reader opening
    ``target`` between them finds nothing, never a partial store. The old directory
    is deleted only after the new one is in place.

    Parameters
    ----------
    work, target : str or os.PathLike
        Siblings on one filesystem (a rename does not cross filesystems).
    check_replaceable : callable, optional
        ``check_replaceable(target)`` runs just before an existing ``target`` is moved
        aside and must raise if it may not be replaced (something appeared meanwhile
        that is not ours). None: ``target`` must not exist.

    Raises
    ------
    OutputExistsError
        ``target`` exists and ``check_replaceable`` is None.
    """
    work, target = os.fspath(work), os.path.abspath(os.fspath(target))
    parent, name = os.path.split(target)
    if not os.path.lexists(target):
        os.rename(work, target)
        fsync_dir(parent)
        return
    if check_replaceable is None:
        raise OutputExistsError(f"refusing to replace {target}: it appeared while {work} was written. "
                                "Remove one of them yourself")
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


def write_object(loc: Location, data: bytes) -> None:
    """Write the small object ``loc`` whole: a reader sees the old content or the new, never a part.

    Locally a temporary sibling, fsynced and ``os.replace``-d (the folder made if
    need be, and fsynced too); under a URL one PUT.
    """
    if not loc.is_local:
        loc.write_bytes(data)
        return
    write_new_file(loc.url, data, overwrite=True)


def check_new_file(path, *, overwrite: bool, option: str = "--out") -> str:
    """Fail early if the local file ``path`` may not be written; return its absolute form.

    For an output written at the end of a long job: checked before the work, so
    that the work is not lost to a path that was never writable.

    Raises
    ------
    OutputExistsError
        ``path`` is a directory, or exists and ``overwrite`` is False.
    ParameterError
        ``path`` is a URL, or its folder (or the nearest existing one above it) is not
        a writable directory.
    """
    text = os.fspath(path)
    if is_url(text):
        raise ParameterError(f"{text!r}: this output is written to a local file; give a local path")
    path = os.path.abspath(os.path.expanduser(text.removeprefix("file://")))
    if os.path.isdir(path):
        raise os_error(OSError(errno.EISDIR, os.strerror(errno.EISDIR), path), option=option)
    if os.path.lexists(path) and not overwrite:
        raise OutputExistsError(f"{path} already exists; pass --overwrite (overwrite=True) to replace it, or choose "
                                "another path")
    folder = os.path.dirname(path)
    while not os.path.lexists(folder):  # made when the file is written
        folder = os.path.dirname(folder)
    if not os.path.isdir(folder):
        raise os_error(OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), folder), option=option)
    if not os.access(folder, os.W_OK | os.X_OK):
        code = errno.EROFS if os.statvfs(folder).f_flag & os.ST_RDONLY else errno.EACCES
        raise os_error(OSError(code, os.strerror(code), folder), option=option)
    return path


def write_new_file(path, data: bytes, *, overwrite: bool) -> None:
    """Write the local file ``path`` whole (a temporary sibling, fsynced, then renamed to ``path``).

    Parameters
    ----------
    path : str or os.PathLike
        The file; its folder is made if need be.
    data : bytes
    overwrite : bool
        Replace an existing file. False: a file that exists, or that appears while
        this one is written, is left alone (the rename is a hard link, which fails
        rather than replace).

    Raises
    ------
    OutputExistsError
        ``path`` exists and ``overwrite`` is False, or it is a directory.
    """
    with new_file(path, overwrite=overwrite) as tmp, open(tmp, "wb") as fh:
        fh.write(data)


@contextlib.contextmanager
def new_file(path, *, overwrite: bool) -> Iterator[str]:
    """Yield a temporary sibling of the local file ``path`` to write; on success, move it to ``path``.

    For a file written piece by piece (an export streamed shard by shard): the caller
    writes the yielded path (created empty), and only a whole file ever appears at
    ``path``. On an exception the temporary file is removed and ``path`` is untouched.
    The file is fsynced before it is renamed, its folder after.

    Parameters
    ----------
    path : str or os.PathLike
        The file; its folder is made if need be.
    overwrite : bool
        Replace an existing file. False: a file that exists, or that appears while
        this one is written, is left alone (the rename is a hard link, which fails
        rather than replace).

    Raises
    ------
    OutputExistsError
        ``path`` exists and ``overwrite`` is False, or it is a directory.
    """
    path = os.path.abspath(os.fspath(path))
    folder, name = os.path.split(path)
    if os.path.isdir(path) and not os.path.islink(path):
        raise OutputExistsError(f"{path} is a directory; give the path of a file to write")
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{name}.tmp-{uuid.uuid4().hex}")
    try:
        with open(tmp, "xb"):  # made here (never through a planted link), written by the caller
            pass
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # unlike a rename, fails if path exists by now
            except FileExistsError:
                raise OutputExistsError(f"{path} already exists; pass --overwrite (overwrite=True) to replace it, "
                                        "or choose another path") from None
            except OSError:  # a file system without hard links: the check and the rename are two steps
                if os.path.lexists(path):
                    raise OutputExistsError(f"{path} already exists; pass --overwrite (overwrite=True) to replace "
                                            "it, or choose another path") from None
                os.replace(tmp, path)
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)
    fsync_dir(folder)


# --------------------------------------------------------------------------- local claims and leftovers


def _not_a_lock(path: str, what: str) -> OutputExistsError:
    return OutputExistsError(
        f"refusing to use {path} as a lock file: it is {what}, and edlae-dask only locks a regular file it may "
        "create (never through a link, which could make it write elsewhere). Remove it and run again"
    )


def open_lock_file(path):
    """Open the lock file ``path`` for reading and writing, creating it (mode 0600); never through a symbolic link.

    Returns
    -------
    file object
        Opened ``r+``; ``fcntl.flock`` it. Closing it releases the lock.

    Raises
    ------
    OutputExistsError
        ``path`` is a symbolic link (even one to a file: opening it would create or
        change the file it points to), a directory or another non-regular file.
    """
    path = os.fspath(path)
    if os.path.islink(path):
        raise _not_a_lock(path, "a symbolic link")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # it became a link after the check above
            raise _not_a_lock(path, "a symbolic link") from None
        if exc.errno == errno.EISDIR:
            raise _not_a_lock(path, "a directory") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):  # a FIFO or a device: never ours
        os.close(fd)
        raise _not_a_lock(path, "not a regular file")
    return os.fdopen(fd, "r+")


def lock_path(target) -> str:
    """The lock file of the local store ``target``: its hidden sibling ``.NAME.lock``."""
    parent, name = os.path.split(os.path.abspath(os.fspath(target)))
    return os.path.join(parent, f".{name}.lock")


def _holder(fh) -> str:
    """Who holds the lock, as its holder wrote it ("pid 12 on host"), or "another process"."""
    try:
        fh.seek(0)
        return fh.read(200).strip() or "another process"
    except OSError:
        return "another process"


@contextlib.contextmanager
def claim(target, *, exclusive: bool, busy: Callable[[str], Exception],
          tidy: Callable[[], None] | None = None) -> Iterator[bool]:
    """Hold a claim on the local store ``target`` for a whole run: a ``flock`` on its sibling ``.NAME.lock``.

    Runs that may write at once share the lock; a run that must be alone (one
    that publishes only into a store nothing else is publishing into) holds it
    exclusively. The kernel releases the lock of a killed run, so a stale claim
    never blocks anyone. Whenever this run holds the lock alone, at the start and
    at the end, ``tidy()`` runs: no other run is writing, so whatever killed runs
    left (temporary directories, an aside) may be removed or recovered. The last
    run out removes the lock file.

    Parameters
    ----------
    target : str or os.PathLike
        The store (a local path); its folder is made if need be.
    exclusive : bool
        Refuse to run beside any other run, and make any other run refuse.
    busy : callable
        ``busy(holder)``: the error raised when the claim cannot be had now
        (``holder``: who holds it, e.g. ``"pid 12 on host"``).
    tidy : callable, optional
        Removes leftovers of killed runs; runs only while this run is alone.
        It must not fail: an error in it is logged, not raised.

    Yields
    ------
    bool
        Whether the claim is held (False on a file system without ``flock``:
        then nothing is locked, tidied or refused, and a warning says so).
    """
    import fcntl  # POSIX only, and only for local stores

    path = lock_path(target)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    while True:
        fh = open_lock_file(path)
        try:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                alone = True
            except BlockingIOError:
                if exclusive:
                    raise busy(_holder(fh)) from None
                try:
                    fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise busy(_holder(fh)) from None
                alone = False
            try:
                same = os.path.samestat(os.fstat(fh.fileno()), os.stat(path))
            except FileNotFoundError:
                same = False
        except OSError as exc:
            fh.close()
            if isinstance(exc, BlockingIOError) or exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS,
                                                                     errno.EINVAL):
                raise
            log.warning("%s: the file system does not support flock (%s), so this run cannot tell whether another "
                        "one writes %s at the same time, and removes no leftovers of killed runs", path, exc, target)
            yield False
            return
        except BaseException:
            fh.close()
            raise
        if same:
            break
        fh.close()  # the last holder removed the file as it finished: claim the path anew
    try:
        if alone:
            _tidy(tidy, target)
            fh.seek(0)
            fh.truncate()  # a killed holder's name, if any, is no longer true
            if exclusive:  # named in the refusal of any other run
                fh.write(f"pid {os.getpid()} on {os.uname().nodename}\n")
                fh.flush()
            else:
                fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)  # from now on, other runs may share the store
        yield True
    finally:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)  # alone now? (a shared lock converts; nobody waits)
            last = True
        except OSError:
            last = False
        if last:
            _tidy(tidy, target)
            with contextlib.suppress(OSError):
                os.unlink(path)
        fh.close()  # closing releases the lock


def _tidy(tidy: Callable[[], None] | None, target) -> None:
    if tidy is None:
        return
    try:
        tidy()
    except Exception as exc:  # noqa: BLE001 - tidying is best effort; the run's own outcome matters more
        log.warning("could not remove what killed runs left beside %s: %s: %s", target, type(exc).__name__, exc)


def _entries(folder: str, pattern: re.Pattern) -> list[str]:
    try:
        names = os.listdir(folder)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(os.path.join(folder, n) for n in names if pattern.fullmatch(n))


def newest_mtime(path: str) -> float:
    """The newest modification time of ``path`` and everything under it (links not followed)."""
    newest = os.lstat(path).st_mtime
    if os.path.isdir(path) and not os.path.islink(path):
        for folder, dirs, files in os.walk(path):
            for n in dirs + files:
                with contextlib.suppress(OSError):
                    newest = max(newest, os.lstat(os.path.join(folder, n)).st_mtime)
    return newest


def remove_leftovers(folder, pattern: re.Pattern, *, ours: Callable[[str], bool] | None = None,
                     idle_s: float | None = None) -> list[str]:
    """Remove what killed runs left in the local ``folder``: entries whose whole name matches ``pattern``.

    Call it only where no live run can be writing them: while holding a :func:`claim`
    alone, or with ``idle_s``.

    Parameters
    ----------
    folder : str or os.PathLike
    pattern : re.Pattern
        Names of the leftovers (a temporary name no user would choose).
    ours : callable, optional
        ``ours(path)``: whether an entry is really a leftover of ours; others stay.
    idle_s : float, optional
        Remove only entries nothing under which was modified for ``idle_s`` seconds.

    Returns
    -------
    list of str
        The paths removed (each one is logged).
    """
    removed = []
    for path in _entries(os.fspath(folder), pattern):
        try:
            if ours is not None and not ours(path):
                continue
            if idle_s is not None and time.time() - newest_mtime(path) < idle_s:
                continue
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.unlink(path)
        except FileNotFoundError:
            continue
        log.info("removed %s, left by an interrupted run", path)
        removed.append(path)
    return removed


def aside_pattern(target) -> re.Pattern:
    """Names of the copies of ``target`` that :func:`move_into_place` moves aside."""
    return re.compile(rf"\.{re.escape(os.path.basename(os.path.abspath(os.fspath(target))))}\.old-[0-9a-f]{{32}}")


def recover_aside(target, *, ours: Callable[[str], bool]) -> str | None:
    """Put back the store a killed :func:`move_into_place` moved aside, if nothing took its place.

    A replace killed between its two renames leaves no ``target`` and the previous
    store under ``.NAME.old-*``: it is renamed back (the newest, should there be
    several), and the recovery logged. Call it only while no other run can be
    replacing ``target`` (holding a :func:`claim` alone).

    Parameters
    ----------
    target : str or os.PathLike
        The local store.
    ours : callable
        ``ours(path)``: whether an aside may become ``target`` again (a store of the
        right kind, or an empty directory); others are left alone.

    Returns
    -------
    str or None
        The aside renamed back, or None.
    """
    target = os.path.abspath(os.fspath(target))
    if os.path.lexists(target):
        return None
    asides = [p for p in _entries(os.path.dirname(target), aside_pattern(target)) if ours(p)]
    if not asides:
        return None
    aside = max(asides, key=newest_mtime)
    os.rename(aside, target)
    fsync_dir(os.path.dirname(target))
    log.warning("recovered %s: a run replacing it was interrupted between its two renames, and the previous store, "
                "moved aside to %s, is back in place", target, aside)
    return aside


# --------------------------------------------------------------------------- pointers and versions


def read_pointer(root: Location, name: str, *, valid: Callable[[str], bool], what: str) -> str | None:
    """The name held by the pointer object ``root/name`` (one GET); None if there is no pointer.

    ``what`` says what the name must be in the error (``"a factor version"``).

    Raises
    ------
    StoreFormatError
        The pointer holds something ``valid`` rejects (see :func:`bad_pointer`).
    """
    where = root.join(name)
    data = where.read_bytes()
    if data is None:
        return None
    text = data.decode("utf-8", "replace").strip()
    if not valid(text):
        raise bad_pointer(str(where), text, what)
    return text


def bad_pointer(where: str, found: str, what: str) -> StoreFormatError:
    """The error for a pointer object whose content is not the name of ``what`` (e.g. "a factor version")."""
    return StoreFormatError(
        f"{where} holds {found[:60]!r}, not the name of {what}: it was not written by edlae-dask "
        "or was tampered with. Publish again (it is rewritten), or remove it yourself"
    )


def by_name(child: Location) -> str:
    """Age of a child whose name starts with its UTC creation time (factor versions, ingest attempts)."""
    return child.name


def by_created(fmt: StoreFormat) -> Callable[[Location], str | None]:
    """Age of a child as its ``created`` attribute (ISO time); None, so never pruned, unless it is of ``fmt``.

    For children whose names say nothing of their age (recommendations versions are
    named by their scoring token). A child without attributes may be being created
    right now, and one of another format is not ours: neither is ever deleted.
    """
    def created(child: Location) -> str | None:
        attrs = group_attrs(child)
        value = attrs.get("created") if fmt.is_ours(attrs) else None
        return value if isinstance(value, str) else None

    return created


@dataclass(frozen=True)
class Versions:
    """A folder of versions under a store's root, and the pointer object naming the published one.

    Attributes
    ----------
    root : Location
        The store.
    pointer : str
        Name of the pointer object under ``root`` (``"LATEST"``, ``"CURRENT"``).
    folder : str
        Name of the folder of versions under ``root`` (``"versions"``, ``"attempts"``).
    valid : callable
        ``valid(name)``: whether the pointer may name ``name`` (one path segment of the
        store's own pattern, so that a pointer never leads outside ``folder``).
    what : str
        What a version is, for messages (``"a factor version"``).
    listed : callable
        ``listed(name)``: whether a child of ``folder`` is a version (default: every
        child); others, such as a local writer's temporary directories, are never
        listed, counted or pruned.
    """

    root: Location
    pointer: str
    folder: str
    valid: Callable[[str], bool] = field(repr=False)
    what: str
    listed: Callable[[str], bool] = field(default=lambda name: True, repr=False)

    def child(self, name: str) -> Location:
        """Where version ``name`` is."""
        return self.root.join(self.folder, name)

    def names(self) -> list[str]:
        """The versions present, complete or not, sorted by name."""
        return [n for n in self.root.join(self.folder).children() if self.listed(n)]

    def read(self) -> str | None:
        """The version the pointer names (one GET); None if there is no pointer.

        Raises
        ------
        StoreFormatError
            The pointer holds something that is not a version name.
        """
        return read_pointer(self.root, self.pointer, valid=self.valid, what=self.what)

    def published(self) -> Location | None:
        """Where the version the pointer names is (None if there is no pointer); see :meth:`read`."""
        name = self.read()
        return None if name is None else self.child(name)

    def publish(self, name: str) -> str | None:
        """Switch the pointer to the complete version ``name``; return the one it named before.

        Locally ``os.replace`` of a temporary file, under a URL one PUT: a reader sees
        the old pointer or the new one. The previous name (None if there was none, or
        the pointer was malformed and is now rewritten) is what a reader that read the
        pointer just before may still be reading: give it to :meth:`prune`.
        """
        if not self.valid(name):
            raise bad_pointer(str(self.root.join(self.pointer)), name, self.what)
        try:
            previous = self.read()
        except StoreFormatError:  # a malformed pointer: rewritten now
            previous = None
        write_object(self.root.join(self.pointer), (name + "\n").encode())
        return previous

    def prune(self, *, current: str, previous: str | None = None, keep: int = 1,
              age: Callable[[Location], object] | None = by_name, idle_s: float | None = None) -> list[str]:
        """Delete the versions a publish of ``current`` leaves behind, by one policy; return their names.

        Run it only after the pointer names ``current``. Kept always: ``current``,
        ``previous``, the ``keep`` newest complete versions (``current`` counts as one)
        and, with ``age``, every version not older than the oldest of those (a publish
        may still be writing it) or of unknown age.

        Parameters
        ----------
        current : str
            The version just published.
        previous : str, optional
            The version the pointer named before (:meth:`publish` returns it): a reader
            may still be reading it. None lets it go by the other rules.
        keep : int, default=1
            Complete versions kept, newest first by ``age``, counting ``current``
            (values below 1 count as 1).
        age : callable or None, default=by_name
            ``age(version_location)``: a sortable age, or None if unknown (then the
            version is kept). None: versions are removed whatever their age, and ``keep``
            counts nothing beyond ``current``.
        idle_s : float, optional
            Remove a version only if nothing under it was written for ``idle_s``
            seconds (:meth:`~edlae_dask.io._fs.Location.idle_for`; never on a backend
            that reports no times): on object storage, which has no locks, a version
            another run is still writing is left alone. None: no such check.
        """
        names = self.names()
        kept = {current, previous}
        removable = [n for n in names if n not in kept]
        if age is not None:
            ages = {n: age(self.child(n)) for n in {*names, current}}
            newest_first = sorted((n for n in ages if ages[n] is not None), key=ages.__getitem__, reverse=True)
            if ages[current] is None:
                return []  # nothing to measure against: a later publish prunes
            complete = []
            for n in newest_first:  # newest first, so only as many markers are read as needed
                if len(complete) >= max(1, keep):
                    break
                if n == current or is_complete(group_attrs(self.child(n))):
                    complete.append(n)
            oldest_kept = min(ages[n] for n in complete)
            removable = [n for n in removable if ages[n] is not None and ages[n] < oldest_kept]
        removed = []
        for name in removable:
            version = self.child(name)
            if idle_s is None or version.idle_for(idle_s):
                version.remove()
                removed.append(name)
        return removed
