"""``edlae-dask verify STORE``: read a whole store and check every part against the checksum written with it.

Each store kind is read the way its own readers read it (those verify as they go,
:mod:`edlae_dask.io.integrity`), all of it, part by part; damaged parts are
collected rather than stopping at the first, so the report names every one:

- interaction store: every user shard, the ids, the counts and the shard offsets;
- factor store: every complete version's ``U`` and ``V`` (block by block), ids and
  eigenvalues (``--version`` for one);
- recommendations store: every done shard's rows and the ids.

The parts are read by Dask's threaded scheduler in this process (or ``client``'s
workers), each task verifying its own part.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import dask

from edlae_dask.errors import StoreFormatError, StoreIntegrityError
from edlae_dask.io._fs import group_attrs, location

__all__ = ["VerifyReport", "verify_store"]


@dataclass
class VerifyReport:
    """What :func:`verify_store` checked.

    Attributes
    ----------
    path : str
    kind : str
        ``"interactions"``, ``"factors"`` or ``"recommendations"``.
    parts : int
        Parts read and verified (shards, blocks, arrays).
    damaged : list of str
        One line per damaged part (empty: all verified).
    unverifiable : list of str
        Parts written without checksums (a store from before them): read, not verified.
    seconds : float
    versions : list of str
        Factor store: the versions checked.
    """

    path: str
    kind: str
    parts: int = 0
    damaged: list = field(default_factory=list)
    unverifiable: list = field(default_factory=list)
    seconds: float = 0.0
    versions: list = field(default_factory=list)

    def summary(self) -> str:
        store = {"interactions": "interaction store", "factors": "factor store"}.get(self.kind, f"{self.kind} store")
        what = f"{store} {self.path}" + (f" (versions {', '.join(self.versions)})" if self.versions else "")
        if self.damaged:
            return f"{what}: {len(self.damaged)} of {self.parts} parts damaged"
        extra = f"; {len(self.unverifiable)} parts have no checksums" if self.unverifiable else ""
        return f"verified {what}: {self.parts} parts match their checksums in {self.seconds:.2f} s{extra}"


class _Opaque:
    """Hides a dask collection from the graph it is passed into, so the task itself computes (and checks) it."""

    def __init__(self, value):
        self.value = value


def _check(func, *args) -> str | None:
    """Run ``func(*args)``; None if it read and verified its part, else the integrity error's message."""
    try:
        func(*args)
    except StoreFormatError as exc:  # StoreIntegrityError, or a part missing altogether
        return str(exc)
    return None


def _read_block(block: _Opaque) -> None:
    block.value.compute(scheduler="sync")  # the block's own task verifies what it reads


def _run_checks(checks: list, client) -> list[str]:
    """Run ``(func, *args)`` checks as tasks, one per part; return the messages of the damaged parts."""
    tasks = [dask.delayed(_check, pure=False)(*c) for c in checks]
    msgs = dask.compute(*tasks, scheduler="threads") if client is None else client.gather(client.compute(tasks))
    return [m for m in msgs if m]


def _blocks(*arrays) -> list:
    return [(_read_block, _Opaque(b)) for x in arrays for b in x.to_delayed().ravel()]


def verify_store(path, *, version: str | None = None, storage_options=None, client=None) -> VerifyReport:
    """Read the whole store at ``path`` and verify it; see the module docstring.

    Raises
    ------
    StoreFormatError
        ``path`` is not an edlae-dask store (or cannot be opened at all).
    StoreIntegrityError
        Not raised: damaged parts are listed in the report (``report.damaged``).
    """
    from edlae_dask.io import factors, recommendations

    t0 = time.perf_counter()
    loc = location(path, storage_options)
    if factors.is_factor_store(loc):
        report = _verify_factors(loc, version, client)
    else:
        attrs = group_attrs(loc)
        if recommendations.FORMAT.is_ours(attrs) or (attrs is None and not loc.is_local
                                                     and loc.join("LATEST").read_bytes() is not None):
            report = _verify_recommendations(loc, client)
        else:  # an interaction store, or an error naming what it is not
            report = _verify_interactions(loc, client)
    report.seconds = time.perf_counter() - t0
    return report


def _verify_interactions(loc, client) -> VerifyReport:
    from edlae_dask.io.interactions import open_interactions, read_shard

    store = open_interactions(loc)  # verifies the shard offsets
    report = VerifyReport(store.path, "interactions")
    checks = [(read_shard, store.location, s) for s in range(store.n_shards)]
    checks += [(getattr(store, name),) for name in ("user_ids", "item_ids", "item_counts")]
    report.damaged = _run_checks(checks, client)
    report.parts = len(checks) + 1
    if not isinstance(store.attrs.get("shard_checksums"), list):
        report.unverifiable.append("shards (written before checksums)")
    if not isinstance(store.attrs.get("checksums"), dict):
        report.unverifiable.append("ids and counts (written before checksums)")
    return report


def _verify_factors(loc, version, client) -> VerifyReport:
    from edlae_dask.io.factors import list_versions, open_factors

    report = VerifyReport(loc.url, "factors")
    if version is not None:
        names = [version]
    else:  # every complete version: an older one may be what a rollback opens
        names = [v for v in list_versions(loc) if (group_attrs(loc.join("versions", v)) or {}).get("complete")]
    if not names:
        raise StoreFormatError(f"{loc.url} has no complete factor version to verify")
    for v in names:
        try:
            f = open_factors(loc, v)  # verifies item_ids and eigenvalues
        except StoreIntegrityError as exc:
            report.damaged.append(str(exc))
            report.parts += 1
            continue
        report.versions.append(v)
        if not isinstance(f.meta.get("checksums"), dict):
            report.unverifiable.append(f"version {v} (written before checksums)")
        checks = _blocks(f.U, f.V)
        report.damaged += _run_checks(checks, client)
        report.parts += len(checks) + 2
    return report


def _verify_recommendations(loc, client) -> VerifyReport:
    from edlae_dask.io.recommendations import open_recommendations

    r = open_recommendations(loc, allow_incomplete=True)  # verifies the ids
    report = VerifyReport(r.path, "recommendations")
    checks = _blocks(r.items)  # a shard's items and scores are read and verified together
    report.damaged = _run_checks(checks, client)
    report.parts = len(checks) + 2
    if not isinstance(r.meta.get("checksums"), dict):
        report.unverifiable.append("ids and rows (written before checksums)")
    if not r.complete:
        report.unverifiable.append(f"{r.meta['n_shards'] - len(r.done_shards)} shards not scored yet")
    return report
