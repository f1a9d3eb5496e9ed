"""The factor store: published versions of the trained factors ``U, V``.

Layout (a directory; each version a zarr v3 group)::

    FACTORS/
      LATEST                      name of the newest complete version (replaced atomically)
      versions/<version>/         zarr v3 group
        U, V                      (n_items, k), row-chunked
        item_ids                  (n_items,)  original item ids
        eigenvalues               (k,)        eigenvalues of BᵀPB for the columns of V
        ritz_residuals            (k,)        ‖M v − θ v‖ / θ of each eigenpair
        attrs: format, format_version, k, lam, p, dtype, interactions fingerprint,
               created, code_version, timings, ..., complete (written last)

``FACTORS`` is a local directory or an fsspec URL (:mod:`edlae_dask.io._fs`). A
version's ``complete`` attribute is written last, and ``LATEST`` is switched to it
only after that, so a reader sees the previous complete version or the new complete
one, never a partial one; a version without ``complete`` is never opened. Old
versions beyond ``keep`` are pruned only after ``LATEST`` has moved.

- Local directory: the version is written under ``versions/.tmp-<version>`` and
  renamed into place before ``LATEST`` is replaced (``os.replace``, fsynced): a
  killed publish leaves only a hidden temporary directory, and the rename makes
  the switch durable. A writer claims the store for its whole run (see
  :class:`FactorWriter`); the next run that holds it alone removes such leftovers.
- URL (object storage has no rename): the version is written directly under
  ``versions/<version>/`` (a fresh, unique name), its ``complete`` marker last,
  then ``LATEST`` is rewritten with one PUT (atomic per object in S3 and GCS). A
  killed publish leaves an incomplete version that no reader opens; it is pruned
  once ``keep`` newer versions exist.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import re
import secrets
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import dask.array as da
import numpy as np
import zarr

from edlae_dask.errors import ModelFitError, OutputExistsError, StoreFormatError
from edlae_dask.io._fs import Location, group_attrs, location
from edlae_dask.io._plain import check_plain_array, get_node
from edlae_dask.io.integrity import BLOCK_DIGESTS_ATTR, verified_blocks, write_blocks
from edlae_dask.io.versioned import (
    StoreFormat,
    Versions,
    check_format,
    claim,
    is_complete,
    mark_complete,
    move_into_place,
    open_group,
    remove_leftovers,
)

FORMAT_NAME = "edlae-dask/factors"
FORMAT_VERSION = 1
FORMAT = StoreFormat(
    FORMAT_NAME, FORMAT_VERSION, "factor store",
    foreign_fix="Pass the --out of `edlae-dask train`",
    version_fix="Retrain with this version, or use the edlae-dask that wrote it",
    incomplete_fix="Its publish did not finish: open another version (`edlae-dask info`), or retrain",
)
_LATEST = "LATEST"
#: the factors proper: refused at publish and at open if they hold NaN or inf
_FACTORS = ("U", "V")
_DAMAGED_FIX = "Publish the factors again (train), or open another version (`edlae-dask info STORE` lists them)"
_VERSIONS = "versions"
# what a local publish killed midway leaves: its version's temporary directory, and LATEST's temporary file
_TMP_VERSION = re.compile(r"\.tmp-v\d{8}T\d{12}Z-[0-9a-f]{6}")
_TMP_LATEST = re.compile(rf"\.{_LATEST}\.tmp-[0-9a-f]{{32}}")


def is_factor_store(path, *, storage_options=None) -> bool:
    """Whether ``path`` (a local path or URL) holds a factor store (published or not)."""
    loc = location(path, storage_options)
    if loc.is_local:
        p = Path(loc.url)
        return (p / _LATEST).is_file() or (p / _VERSIONS).is_dir()
    return loc.join(_LATEST).read_bytes() is not None or _VERSIONS in loc.children()


#: What :func:`output_state` finds, in words (``train --check`` prints it)
OUTPUT_STATES = {
    "new": "does not exist: it will be created",
    "empty": "is an empty directory: the factor store will be written there",
    "unpublished": "holds a factor store with no published version (a killed first run): it will be published there",
    "new-version": "holds a factor store: a new version will be published into it (--overwrite)",
}


def output_state(path, *, overwrite: bool, storage_options=None) -> str:
    """What publishing a factor store at ``path`` would do; reads only. A key of :data:`OUTPUT_STATES`.

    Raises
    ------
    OutputExistsError
        Where a run would refuse: a published factor store without ``overwrite``, or
        anything else that is not an empty directory.
    """
    loc = path if isinstance(path, Location) else location(path, storage_options)
    root = Path(loc.url) if loc.is_local else loc
    if not loc.exists():
        return "new"
    if is_factor_store(loc):
        # without LATEST nothing was published (a killed first run): its rerun needs no --overwrite
        if _read_latest(loc) is None:
            return "unpublished"
        if not overwrite:
            raise OutputExistsError(
                f"{root} already holds a factor store; pass --overwrite (overwrite=True) to publish "
                "a new version into it (the previous versions stay readable until pruned), "
                "or choose another --out"
            )
        return "new-version"
    if not loc.is_local or root.is_file() or any(root.iterdir()):
        raise OutputExistsError(
            f"{root} exists and is not an edlae-dask factor store; refusing to write into it. "
            "Choose another --out or remove it yourself."
        )
    return "empty"


def _new_version_name() -> str:
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    return f"v{now}-{secrets.token_hex(3)}"


def _versions(root: Location) -> Versions:
    """``LATEST`` and ``versions/``; a local publish's ``.tmp-`` directories are not versions."""
    return Versions(root, _LATEST, _VERSIONS, valid=_is_version_name, what="a factor version",
                    listed=lambda name: name.startswith("v"))


def _read_latest(root: Location) -> str | None:
    """The version ``LATEST`` names (None if there is no LATEST); a malformed one is a StoreFormatError."""
    return _versions(root).read()


def _is_version_name(name: str) -> bool:
    # a version is one path segment: a pointer never leads outside versions/
    return bool(name) and len(name) < 200 and name not in (".", "..") and not any(c in name for c in "/\\\n")


def _check_plain_array(arr, where: str) -> None:
    check_plain_array(arr, where, "biufU", "factor store")


class FactorWriter:
    """Writes one new version of a factor store; :meth:`commit` publishes it.

    Use as a context manager: leaving the block with an exception removes the
    partial version, and nothing is published.

    A local store is claimed from the start to the commit or abort
    (:func:`edlae_dask.io.versioned.claim`): without ``overwrite`` alone, so a
    second run into the same fresh store is refused at once instead of publishing
    too; with it, beside other ``overwrite`` runs. A run that holds the claim
    alone removes what killed publishes left (``versions/.tmp-*``,
    ``.LATEST.tmp-*``), and a store directory this run created is removed again
    when it ends without a complete version.

    Parameters
    ----------
    path : str, os.PathLike or Location
        The factor store: a local directory or an fsspec URL.
    overwrite : bool, default=False
        Publish into a store that already has a published version.
    keep : int, default=3
        Versions kept after a publish (the newest ones).
    storage_options : dict, optional
        fsspec options for a URL. The version's zarr arrays carry them to the
        workers that write U and V.
    """

    def __init__(self, path, *, overwrite: bool = False, keep: int = 3, storage_options=None):
        self.location = location(path, storage_options)
        self.root = Path(self.location.url) if self.location.is_local else self.location
        self.committed = False
        self._created_root = False
        self._claim = contextlib.ExitStack()
        try:
            self._start(overwrite, keep)
        except BaseException:
            self._release()
            raise

    def _start(self, overwrite: bool, keep: int) -> None:
        if self.location.is_local:
            self.root.parent.mkdir(parents=True, exist_ok=True)
            self._claim.enter_context(claim(self.root, exclusive=not overwrite, busy=self._busy(overwrite),
                                            tidy=self._tidy))
        output_state(self.location, overwrite=overwrite)
        self.keep = keep
        self.overwrite = overwrite
        self.version = _new_version_name()
        if self.location.is_local:
            try:
                self.root.mkdir()
                self._created_root = True  # so removed again if this run publishes nothing
            except FileExistsError:
                pass
            (self.root / _VERSIONS).mkdir(exist_ok=True)
            self.tmp = self.location.join(_VERSIONS, f".tmp-{self.version}")
        else:  # no rename on object storage: write the version under its final, unique name
            self.tmp = self.location.join(_VERSIONS, self.version)
        self.group = self.tmp.open_group("w")
        # the format first: a version whose publish died is then reported as incomplete, not as foreign
        self.group.attrs.update(format=FORMAT.name, format_version=FORMAT.version, version=self.version)

    def _busy(self, overwrite: bool):
        def busy(holder: str) -> OutputExistsError:
            alone = "" if overwrite else ", and without --overwrite a run must be the only one publishing there"
            return OutputExistsError(
                f"refusing to train into {self.root}: another run ({holder}) is writing this factor store right "
                f"now{alone}. Wait for it to finish (then --overwrite publishes a newer version), or choose another "
                "--out"
            )

        return busy

    def _tidy(self) -> None:
        """Remove what killed publishes left; runs only while this run holds the claim alone."""
        root = self.location.url
        if is_factor_store(self.location):  # in anything else, nothing is ours to remove
            remove_leftovers(os.path.join(root, _VERSIONS), _TMP_VERSION, ours=_ours_or_bare)
            remove_leftovers(root, _TMP_LATEST)
        if self._created_root and not self.committed and not _has_complete_version(self.location):
            shutil.rmtree(root, ignore_errors=True)  # an empty store this run made: as if it never ran

    def _release(self) -> None:
        self._claim.close()  # idempotent

    @property
    def url(self) -> str:
        """Where arrays of this version are written (a zarr group path or URL)."""
        return self.tmp.url

    def write_array(self, name: str, x, *, chunks=None, compute: bool = True):
        """Write a numpy or dask array ``x`` as ``name``, with a checksum of each block.

        A dask array is written by the workers, one task per block, each also returning
        the block's digest (:func:`edlae_dask.io.integrity.write_blocks`); ``compute=False``
        returns that graph as a Delayed for the caller to compute. Blocks of ``U`` and
        ``V`` holding NaN or inf are refused (:class:`ModelFitError`): broken factors are
        never published. :meth:`commit` records every array's digests in the version.
        """
        if isinstance(x, da.Array):
            # zarr chunks = the dask row blocks (the last one may be short), so every
            # task writes whole chunks and no two tasks touch one chunk
            zchunks = tuple(c[0] for c in x.chunks)
            # factor values hardly compress, and scoring reads U and V once per user shard:
            # store them raw rather than pay zstd on every read
            # a chunk that is missing on disk then reads as NaN (which scoring refuses), never as zeros
            arr = self.group.create_array(name, shape=x.shape, dtype=x.dtype, chunks=zchunks, compressors=None,
                                          fill_value=np.nan if x.dtype.kind == "f" else None)
            task = write_blocks(x, arr, finite=name if name in _FACTORS else None)
            if not compute:
                return task
            task.compute()
            return None
        x = np.asarray(x)
        if name in _FACTORS and x.dtype.kind == "f" and not np.isfinite(x).all():
            raise ModelFitError(f"{name} holds NaN or infinite values: refusing to publish broken factors")
        chunks = chunks or x.shape or None
        arr = self.group.create_array(name, shape=x.shape, dtype=x.dtype, chunks=chunks)
        arr[...] = x
        # the same per-block digests as the workers record for a dask array
        write_blocks(da.from_array(x, chunks=arr.chunks), arr).compute(scheduler="sync")
        return None

    def commit(self, attrs: dict) -> str:
        """Record the arrays' checksums, set the attributes, mark complete, move into place, name it in LATEST."""
        checksums = {}
        for name, arr in self.group.arrays():
            grid = arr.attrs.get(BLOCK_DIGESTS_ATTR)
            if grid is None:
                raise StoreFormatError(f"{self.url}/{name} was not written completely (no checksums): not publishing")
            checksums[name] = grid
        missing = [name for name in (*_FACTORS, "item_ids", "eigenvalues") if name not in checksums]
        if missing:
            raise StoreFormatError(f"factor version {self.url} lacks {missing}: not publishing")
        versions = _versions(self.location)
        if not self.overwrite and versions.read() is not None:
            # checked at the start too; a run no claim keeps out (under a URL: no locks) may have published since
            raise OutputExistsError(
                f"refusing to publish into {self.root}: another run published a factor version there while this one "
                "trained. Pass --overwrite (overwrite=True) to publish a newer version, or choose another --out"
            )
        mark_complete(self.group, FORMAT.stamp(attrs, version=self.version, checksums=checksums))
        if self.location.is_local:  # a fresh, unique name: nothing is ever replaced
            move_into_place(self.tmp.url, versions.child(self.version).url)
        versions.publish(self.version)
        self.committed = True
        try:
            self._prune()
        finally:
            self._release()
        return self.version

    def abort(self) -> None:
        try:
            self.tmp.remove()
        finally:
            self._release()

    def _prune(self) -> None:
        """Keep the ``keep`` newest complete versions and anything newer than the oldest of them.

        Runs only after LATEST moved. Version names sort by creation time. Only complete
        versions count towards ``keep`` (on a URL, killed publishes leave incomplete ones
        under their final names), so the version LATEST named before is never among the
        removed while ``keep`` >= 2; an incomplete version is removed once it is older than
        every kept one (a publish that old is dead), never while it may still be writing.
        """
        _versions(self.location).prune(current=self.version, keep=self.keep)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if not self.committed:
            self.abort()
        return False




def _ours_or_bare(path: str) -> bool:
    """A temporary version directory is removed if it is ours or no zarr group at all (never another format)."""
    attrs = group_attrs(path)
    return attrs is None or FORMAT.is_ours(attrs)


def _has_complete_version(root: Location) -> bool:
    versions = _versions(root)
    return versions.read() is not None or any(is_complete(group_attrs(versions.child(n))) for n in versions.names())


@dataclass(frozen=True)
class Factors:
    """One published version of a factor store.

    Attributes
    ----------
    path : str
        The factor store: an absolute local path or a URL.
    version : str
    U, V : dask.array.Array of shape (n_items, k)
        Lazily read from the store (``.compute()`` or :meth:`load` for numpy).
        Scores of a user row x are ``(x @ U) @ V.T`` (eq. 16–17).
    item_ids : numpy.ndarray of shape (n_items,)
    eigenvalues : numpy.ndarray of shape (k,)
    meta : dict
        The version's attributes (k, lam, p, dtype, fingerprints, timings, ...).
    """

    path: str
    version: str
    U: da.Array = field(repr=False)
    V: da.Array = field(repr=False)
    item_ids: np.ndarray = field(repr=False)
    eigenvalues: np.ndarray = field(repr=False)
    meta: dict = field(repr=False)
    storage_options: dict | None = field(default=None, repr=False, compare=False)

    @property
    def location(self) -> Location:
        """Where the store is (URL and storage options): what a task needs to open it again."""
        return Location(self.path, self.storage_options)

    @property
    def k(self) -> int:
        return int(self.meta["k"])

    @property
    def n_items(self) -> int:
        return int(self.U.shape[0])

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(U, V)`` as numpy arrays."""
        return np.asarray(self.U.compute(scheduler="threads")), np.asarray(self.V.compute(scheduler="threads"))


def list_versions(path, *, storage_options=None) -> list[str]:
    """Names of the versions in the store (complete or not, oldest first); temporary ones left out."""
    return _versions(location(path, storage_options)).names()


def open_factors(path, version: str | None = None, *, storage_options=None) -> Factors:
    """Open the latest (or a given) complete version of the factor store at ``path``.

    Parameters
    ----------
    path : str, os.PathLike or Location
        A local directory or an fsspec URL (``s3://bucket/factors``).
    version : str, optional
        Default: the one ``LATEST`` names.
    storage_options : dict, optional
        fsspec options for a URL (default: fsspec's defaults and environment).

    Raises
    ------
    StoreFormatError
        If there is no factor store, the version is incomplete, or its format
        name or version is not the one this code reads.
    """
    loc = location(path, storage_options)
    root = loc.url
    if not loc.exists():
        raise StoreFormatError(f"no factor store at {root}: train one with `edlae-dask train --out {root}`")
    if version is None:
        version = _read_latest(loc)
        if version is None:
            raise StoreFormatError(
                f"{root} has no complete factor version (no {_LATEST} file): it is not a factor store, or no "
                "training run has published into it yet"
            )
    elif not _is_version_name(str(version)):
        raise StoreFormatError(f"{version!r} is not a factor version name (see `edlae-dask info {root}`)")
    vloc = _versions(loc).child(version)
    vpath = vloc.url
    group = open_group(vloc, FORMAT)
    attrs = check_format(dict(group.attrs), vpath, FORMAT, complete=True)
    arrays = {}
    for name in ("U", "V", "item_ids", "eigenvalues"):
        arrays[name] = get_node(group, name, f"{vpath}/{name}")
        if not isinstance(arrays[name], zarr.Array):
            raise StoreFormatError(f"factor version {vpath} lacks the array {name!r}: the store is damaged; retrain")
        _check_plain_array(arrays[name], f"{vpath}/{name}")
    U, V = arrays["U"], arrays["V"]
    k, n = attrs.get("k"), arrays["item_ids"].shape[0]
    if U.shape != V.shape or U.shape != (n, k) or arrays["eigenvalues"].shape != (k,):
        raise StoreFormatError(
            f"factor version {vpath} is inconsistent: U {U.shape}, V {V.shape}, item_ids ({n},), "
            f"eigenvalues {arrays['eigenvalues'].shape}, k={k}"
        )
    # every block is verified against the checksum written with it when it is read (by the task reading it);
    # a version from before checksums is read unverified, but NaN or inf (a missing chunk reads as NaN) is refused
    checksums = attrs.get("checksums") if isinstance(attrs.get("checksums"), dict) else {}
    store = f"factor store {root} (version {version})"

    def verified(name, finite=False):
        return verified_blocks(arrays[name], checksums.get(name), store=store, array=name, fix=_DAMAGED_FIX,
                               finite=finite)

    return Factors(
        path=root,
        storage_options=loc.storage_options,
        version=version,
        U=verified("U", finite=True),
        V=verified("V", finite=True),
        item_ids=verified("item_ids").compute(scheduler="sync"),
        eigenvalues=verified("eigenvalues").compute(scheduler="sync"),
        meta=attrs,
    )
