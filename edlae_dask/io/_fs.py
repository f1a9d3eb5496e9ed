"""Where a store lives: a local directory, or an fsspec URL on object storage.

Every store takes its path as a local path or an fsspec URL (``s3://bucket/prefix``,
``gcs://bucket/prefix``, ``memory://name``; a ``file://`` URL is a local path), plus
optional ``storage_options`` for the fsspec filesystem (credentials, ``endpoint_url``,
...). Without them fsspec's defaults and environment apply (``AWS_*`` variables, a
GCP service account, ``FSSPEC_S3_*``, ...). Zarr reads and writes URLs through
its own :class:`zarr.storage.FsspecStore`.

A :class:`Location` carries the URL and the options. It is small and picklable and
is what Dask tasks get, so every worker opens the store itself by URL: no data or
file handle travels from the client. (``memory://`` stores live in one process:
use them with the threaded scheduler only.)

Object stores have no rename, so what is published there is made visible by one
PUT of one small object (atomic per object in S3 and GCS): a completion marker
written last, or a pointer naming a complete version (:mod:`edlae_dask.io.versioned`).
Nor do they have locks: a version or attempt that a pointer no longer names is
deleted only once nothing has written to it for :data:`PRUNE_GRACE_S`, as told
by the modification times in the backend's listing (:meth:`Location.idle_for`).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from edlae_dask.errors import ParameterError

__all__ = ["Location", "group_attrs", "is_url", "location", "parse_storage_options"]

# Under a URL a version or write attempt that anything wrote to more recently than this is never
# pruned: a run may still be writing it (longer than any one shard takes to score or to ingest)
PRUNE_GRACE_S = 3600.0

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")


def is_url(path) -> bool:
    """True for an fsspec URL other than ``file://`` (those are local paths)."""
    return isinstance(path, str) and bool(_SCHEME.match(path)) and not path.startswith("file://")


@dataclass(frozen=True)
class Location:
    """A store's place: an absolute local path, or an fsspec URL with its storage options.

    Attributes
    ----------
    url : str
        Absolute local path, or a URL without a trailing slash.
    storage_options : dict or None
        Passed to the fsspec filesystem of a URL; ignored for a local path. Not
        part of equality, and never shown in a repr or message (it may hold secrets).
    """

    url: str
    storage_options: dict | None = field(default=None, compare=False, hash=False, repr=False)

    @property
    def is_local(self) -> bool:
        return not is_url(self.url)

    def __str__(self) -> str:
        return self.url

    def join(self, *parts: str) -> Location:
        """The location ``parts`` below this one."""
        if self.is_local:
            return replace(self, url=os.path.join(self.url, *parts))
        return replace(self, url="/".join([self.url, *(p.strip("/") for p in parts)]))

    @property
    def name(self) -> str:
        """The last part of the path."""
        return os.path.basename(self.url) if self.is_local else self.url.rsplit("/", 1)[-1]

    # -------------------------------------------------------------- zarr

    def open_group(self, mode: str = "r"):
        """``zarr.open_group`` of this location (zarr v3; a URL through zarr's FsspecStore)."""
        import zarr

        if self.is_local:
            return zarr.open_group(self.url, mode=mode, zarr_format=3)
        return zarr.open_group(self.url, mode=mode, zarr_format=3, storage_options=dict(self.storage_options or {}))

    def create_array(self, **kwargs):
        """``zarr.create_array`` here, replacing whatever is there (no "does it exist?" check to race with)."""
        import zarr

        if not self.is_local:
            kwargs["storage_options"] = dict(self.storage_options or {})
        return zarr.create_array(self.url, zarr_format=3, overwrite=True, **kwargs)

    # -------------------------------------------------------------- plain objects (URLs)

    def _fs(self):
        """``(filesystem, path)`` of a URL; listings are not cached across calls (other writers exist)."""
        from fsspec.core import url_to_fs

        fs, path = url_to_fs(self.url, **dict(self.storage_options or {}))
        return fs, path

    def read_bytes(self) -> bytes | None:
        """The object's content (one GET), or None if there is none."""
        if self.is_local:
            try:
                with open(self.url, "rb") as fh:
                    return fh.read()
            except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
                return None
        fs, path = self._fs()
        try:
            return fs.cat_file(path)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None

    def write_bytes(self, data: bytes) -> None:
        """Write the object whole, in one PUT: readers see the old content or the new, never part."""
        fs, path = self._fs()
        fs.pipe_file(path, data)

    def read_json(self) -> dict | None:
        """A JSON object stored here, or None if absent or not a JSON object."""
        data = self.read_bytes()
        if data is None:
            return None
        try:
            doc = json.loads(data)
        except ValueError:
            return None
        return doc if isinstance(doc, dict) else None

    def read_many(self, locations: list[Location]) -> dict[str, bytes]:
        """Contents of several objects at once (absent ones left out), keyed by URL."""
        if not locations:
            return {}
        if self.is_local:
            found = {str(loc): loc.read_bytes() for loc in locations}
            return {k: v for k, v in found.items() if v is not None}
        fs, _ = self._fs()
        paths = {loc._fs()[1]: str(loc) for loc in locations}
        got = fs.cat(list(paths), on_error="omit")
        return {paths[p]: data for p, data in got.items() if p in paths and isinstance(data, bytes)}

    def exists(self) -> bool:
        """Anything at or under this location."""
        if self.is_local:
            return os.path.lexists(self.url)
        fs, path = self._fs()
        fs.invalidate_cache(path)
        return fs.exists(path)

    def children(self) -> list[str]:
        """Names directly under this location (sorted; empty if none)."""
        if self.is_local:
            return sorted(os.listdir(self.url)) if os.path.isdir(self.url) else []
        fs, path = self._fs()
        fs.invalidate_cache(path)
        try:
            entries = fs.ls(path, detail=False)
        except FileNotFoundError:
            return []
        return sorted({e.rstrip("/").rsplit("/", 1)[-1] for e in entries if e.rstrip("/") != path.rstrip("/")})

    def remove(self) -> None:
        """Delete everything at and under this location (best effort; absent is fine)."""
        if self.is_local:
            import shutil

            if os.path.isdir(self.url) and not os.path.islink(self.url):
                shutil.rmtree(self.url, ignore_errors=True)
            elif os.path.lexists(self.url):
                os.unlink(self.url)
            return
        fs, path = self._fs()
        fs.invalidate_cache(path)
        try:
            fs.rm(path, recursive=True)
        except FileNotFoundError:
            pass
        fs.invalidate_cache(path)

    def last_modified(self) -> float | None:
        """Newest modification time (POSIX seconds) of anything at or under this location.

        Under a URL one listing (``find`` with details; paginated by the backend).
        None when there is nothing here, or when the backend reports no time for
        some object: callers that delete what is "old" must then leave it alone.
        """
        if self.is_local:
            times = []
            for folder, _, files in os.walk(self.url):
                times += [os.lstat(os.path.join(folder, f)).st_mtime for f in files]
            if os.path.isfile(self.url):
                times.append(os.lstat(self.url).st_mtime)
            return max(times) if times else None
        fs, path = self._fs()
        fs.invalidate_cache(path)
        try:
            found = fs.find(path, detail=True)
        except FileNotFoundError:
            return None
        times = [_mtime(info) for info in found.values()]
        return None if not times or None in times else max(times)

    def idle_for(self, seconds: float) -> bool:
        """Whether nothing at or under this location was written for ``seconds`` (False if that is not known)."""
        modified = self.last_modified()
        return modified is not None and time.time() - modified >= seconds


# where fsspec backends put an object's modification time: local and gcsfs "mtime", s3fs
# "LastModified", adlfs "last_modified", gcsfs "updated", memory:// "created" (written whole, never in place)
_MTIME_KEYS = ("mtime", "LastModified", "last_modified", "updated", "created")


def _mtime(info: dict) -> float | None:
    """An fsspec listing entry's modification time in POSIX seconds, or None if it has none."""
    for key in _MTIME_KEYS:
        value = info.get(key)
        if isinstance(value, _dt.datetime):
            return (value if value.tzinfo else value.replace(tzinfo=_dt.timezone.utc)).timestamp()
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                parsed = _dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                continue
            return (parsed if parsed.tzinfo else parsed.replace(tzinfo=_dt.timezone.utc)).timestamp()
    return None


def group_attrs(path) -> dict | None:
    """Attributes of the zarr v3 group at ``path`` (a path, URL or Location), or None if there is no group."""
    try:
        return dict(location(path).open_group("r").attrs)
    except Exception:  # noqa: BLE001 - zarr raises several types for "no group here" (and for unreadable metadata)
        return None


def location(path, storage_options: Mapping | None = None) -> Location:
    """The :class:`Location` of a local path (made absolute), ``file://`` URL or fsspec URL.

    Parameters
    ----------
    path : str, os.PathLike or Location
    storage_options : mapping, optional
        For a URL: options of its fsspec filesystem. Ignored for a local path, so
        one job may mix local paths and URLs. A Location keeps its own options
        unless it has none.
    """
    opts = dict(storage_options) if storage_options else None
    if isinstance(path, Location):
        return path if path.storage_options or not opts else replace(path, storage_options=opts)
    text = os.fspath(path)
    text = text.removeprefix("file://")
    if not is_url(text):
        if "://" in text:
            raise ParameterError(f"{text!r} is not a valid path or fsspec URL (scheme://bucket/prefix)")
        return Location(os.path.abspath(os.path.expanduser(text)))
    url = text.rstrip("/")
    if url.endswith("://") or not url.split("://", 1)[1]:
        raise ParameterError(f"the store URL {text!r} names no bucket or prefix; give scheme://bucket/prefix")
    return Location(url, opts)


def parse_storage_options(text) -> dict | None:
    """Storage options from a JSON object text (a mapping is taken as is); None for empty.

    Raises
    ------
    ParameterError
        Not a JSON object.
    """
    if text is None or text == "" or text == {}:
        return None
    if isinstance(text, Mapping):
        return dict(text)
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ParameterError(f"storage options must be a JSON object such as '{{\"anon\": true}}'; got {text!r} "
                             f"({exc})") from exc
    if not isinstance(value, dict):
        raise ParameterError(f"storage options must be a JSON object (a mapping); got {text!r}")
    return value
