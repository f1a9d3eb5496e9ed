"""Stores are read as data only: the one check every store reader applies to an array before loading it.

A zarr array is loaded only if it is a zarr v3 array of plain numbers or
fixed-width strings, encoded with the core v3 codecs. That rules out object and
variable-length dtypes, zarr v2 arrays (whose filters may name numcodecs'
``Pickle``), and any codec registered by a third-party package (which could run
arbitrary code when a chunk is decoded): such an array is a
:class:`~edlae_dask.errors.StoreFormatError`, never read.
"""

from __future__ import annotations

from edlae_dask.errors import StoreFormatError

#: codecs of the zarr v3 core specification; what edlae-dask writes uses "bytes" (+ "zstd")
SAFE_CODECS = frozenset({"bytes", "transpose", "zstd", "blosc", "gzip", "crc32c", "sharding_indexed"})


def _codec_names(codecs) -> list[str]:
    names = []
    for codec in codecs:
        spec = codec.to_dict() if hasattr(codec, "to_dict") else dict(codec)
        names.append(str(spec.get("name")))
        for inner in ("codecs", "index_codecs"):  # a sharding codec's own chunks
            names += _codec_names(getattr(codec, inner, None) or ())
    return names


def check_plain_array(arr, where: str, kinds: str, what: str) -> None:
    """Raise :class:`StoreFormatError` unless ``arr`` may be loaded as plain data.

    Parameters
    ----------
    arr : zarr.Array
    where : str
        The array's path, for the message.
    kinds : str
        numpy dtype kinds accepted (``"f"``, ``"iu"``, ``"iuU"``, ...).
    what : str
        Which store this is ("factor store", ...), for the message.
    """
    meta = getattr(arr, "metadata", None)
    fmt = getattr(meta, "zarr_format", None)
    problem = None
    if fmt != 3:
        problem = f"is a zarr v{fmt} array (only zarr v3 arrays are read)"
    elif arr.dtype == object or arr.dtype.kind not in kinds:
        problem = f"has dtype {arr.dtype} (expected one of the numpy kinds {kinds!r}; never object or variable-length)"
    else:
        unsafe = sorted(set(_codec_names(meta.codecs)) - SAFE_CODECS)
        if unsafe:
            problem = (f"is encoded with the codecs {unsafe} (only the zarr v3 core codecs {sorted(SAFE_CODECS)} "
                       "are read)")
    if problem:
        raise StoreFormatError(
            f"{where} {problem}: an edlae-dask {what} holds plain numbers and fixed-width strings only, and "
            "nothing pickled or object-typed is ever loaded. It was not written by edlae-dask or was tampered with; "
            "write it again"
        )


def get_node(group, name: str, where: str):
    """``group[name]``, or None if there is no such node; metadata zarr cannot parse is a StoreFormatError.

    (An array naming a codec that is not installed, e.g. ``numcodecs.pickle``, fails here,
    before anything is decoded.)
    """
    try:
        return group[name]
    except KeyError:
        return None
    except Exception as exc:  # zarr raises several types for metadata it cannot parse
        raise StoreFormatError(
            f"{where} cannot be read as a zarr v3 array ({type(exc).__name__}: {exc}); it was not written by "
            "edlae-dask or was tampered with"
        ) from exc
