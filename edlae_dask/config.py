"""Parameters, their defaults and their checks, and job-spec YAML reading: no click, no Dask.

Everything a user can set lives here once: :class:`TrainParams` (the estimator's
and ``edlae-dask train``'s parameters, with their defaults), the allowed values of
the choice parameters, and the generic checks of a YAML mapping (keys, types) that
job specs (:mod:`edlae_dask.jobspec`) and cluster specs (:mod:`edlae_dask.cluster`)
share. The CLI, the job specs and :class:`edlae_dask.model.EDLAE` take their
defaults from here.
"""

from __future__ import annotations

import difflib
import numbers
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edlae_dask.errors import ParameterError
from edlae_dask.planning import MAX_BLOCK_SIZE, default_block_size

#: ``dense``: exact Algorithm 1 (n × n matrices); ``scalable``: neighbour-restricted teacher,
#: matrix-free student (:mod:`edlae_dask.scalable`); ``auto``: dense if it fits the cluster's memory.
TRAINING_PATHS = ("auto", "dense", "scalable")
#: Working precision of every stage.
DTYPES = ("float32", "float64")
#: How the scalable path ranks candidate neighbours: the co-occurrence count ``G_aj``, or its
#: cosine ``G_aj / sqrt(G_aa·G_jj)`` (which favours less popular items).
NEIGHBOR_SCORES = ("count", "cosine")
#: Default K of the scalable path; its accuracy against the dense path on real data is in
#: benchmarks/results/design-notes.md and scalable-accuracy-*.md. The teacher costs K³ per item, so larger
#: K is for smaller catalogues.
DEFAULT_NEIGHBORS = 64


# --------------------------------------------------------------------------- training parameters


@dataclass(frozen=True)
class TrainParams:
    """Parameters of one training run; see :class:`EDLAE` for their meaning."""

    k: int = 100
    lam: float = 20.0
    p: float = 0.25
    dtype: str = "float32"
    block_size: int | None = None
    n_oversamples: int | None = None
    n_power_iter: int | None = None
    seed: int = 0
    path: str = "auto"
    neighbors: int = DEFAULT_NEIGHBORS
    neighbor_score: str = "count"

    def validate(self, n_items: int | None = None) -> "TrainParams":
        def bad(name, want, got):
            return ParameterError(f"The {name!r} parameter of EDLAE must be {want}. Got {got!r} instead.")

        if not isinstance(self.k, numbers.Integral) or isinstance(self.k, bool) or self.k <= 0:
            raise bad("k", "a positive int (the rank of U, V)", self.k)
        if n_items is not None and self.k >= n_items:
            raise bad("k", f"less than the number of items ({n_items}); a rank-{n_items} model is the full-rank teacher", self.k)
        if not isinstance(self.lam, numbers.Real) or not np.isfinite(self.lam) or self.lam < 0:
            raise bad("lam", "a finite float >= 0", self.lam)
        if not isinstance(self.p, numbers.Real) or not (0 <= self.p < 1):
            raise bad("p", "a float in [0, 1) (the dropout probability)", self.p)
        if self.dtype not in DTYPES:
            raise bad("dtype", "'float32' or 'float64'", self.dtype)
        # MAX_BLOCK_SIZE keeps every LAPACK call small (see edlae_dask.planning)
        if self.block_size is not None and (
            not isinstance(self.block_size, numbers.Integral) or not 1 <= self.block_size <= MAX_BLOCK_SIZE
        ):
            raise bad("block_size", f"an int in [1, {MAX_BLOCK_SIZE}] or None", self.block_size)
        for name in ("n_oversamples", "n_power_iter"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, numbers.Integral) or v < 0):
                raise bad(name, "an int >= 0 or None (chosen by measurement)", v)
        if self.path not in TRAINING_PATHS:
            raise bad("path", f"one of {TRAINING_PATHS}", self.path)
        if not isinstance(self.neighbors, numbers.Integral) or isinstance(self.neighbors, bool) or self.neighbors < 1:
            raise bad("neighbors", "a positive int (neighbours per item of the scalable path)", self.neighbors)
        if self.neighbor_score not in NEIGHBOR_SCORES:
            raise bad("neighbor_score", f"one of {NEIGHBOR_SCORES}", self.neighbor_score)
        return self

    def resolved_block_size(self, n_items: int) -> int:
        """The block size, or the rule's (:func:`edlae_dask.planning.default_block_size`) if not set."""
        return int(self.block_size or default_block_size(n_items))


# --------------------------------------------------------------------------- YAML mappings (job and cluster specs)


def read_yaml_mapping(path: str | os.PathLike, what: str) -> dict:
    """Read a YAML file that must hold a mapping, as data only (``yaml.safe_load``).

    Raises
    ------
    ParameterError
        The file is missing, is not YAML, or does not hold a mapping with string keys.
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ParameterError(f"{what} {str(path)!r} does not exist" + (" (it is a directory)" if path.is_dir() else ""))
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ParameterError(f"{what} {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ParameterError(f"{what} {path} must hold a mapping of keys to values, not "
                             f"{type(data).__name__ if data is not None else 'nothing'}")
    for key in data:
        if not isinstance(key, str):
            raise ParameterError(f"{what} {path}: key {key!r} must be a string")
    return data


def check_keys(data: dict, allowed, where: str) -> None:
    """Reject keys not in ``allowed``, naming the nearest valid key."""
    for key in data:
        if key in allowed:
            continue
        normal = {k.replace("_", "-").lower(): k for k in allowed}
        near = difflib.get_close_matches(str(key).replace("_", "-").lower(), list(normal), n=1, cutoff=0.6)
        hint = f"; did you mean {normal[near[0]]!r}?" if near else ""
        raise ParameterError(f"{where}: unknown key {key!r}{hint} Valid keys: {', '.join(sorted(allowed))}")


_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string", list: "a list",
               dict: "a mapping", type(None): "null"}


def check_type(value, types: tuple, key: str, where: str) -> None:
    """Require ``value`` to be one of ``types`` (a bool is not an int; list items must be strings)."""
    ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
    if ok and isinstance(value, list):
        ok = all(isinstance(v, str) for v in value)
    if not ok:
        named = [t for t in types if not (t is int and float in types)]  # "a number" covers integers
        expected = " or ".join(_TYPE_NAMES.get(t, t.__name__) for t in named)
        if list in types:
            expected = expected.replace("a list", "a list of strings")
        raise ParameterError(f"{where}: {key!r} must be {expected}, not {value!r} ({type(value).__name__})")
