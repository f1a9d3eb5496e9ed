"""`from edlae_dask import <name>` gives the documented object, whatever has been imported before."""

import importlib
import pkgutil
import subprocess
import sys

import edlae_dask


def _subpackages_and_modules() -> set[str]:
    return {m.name.rsplit(".", 1)[-1] for m in pkgutil.iter_modules(edlae_dask.__path__)}


def test_no_public_name_is_also_a_submodule():
    # importing edlae_dask.X sets the attribute edlae_dask.X to the module, shadowing a lazy name X for good
    clash = set(edlae_dask.__all__) & _subpackages_and_modules()
    assert not clash, f"public names that are also submodules of edlae_dask: {sorted(clash)}"


def test_public_functions_stay_callable_after_every_submodule_is_imported():
    # in a fresh interpreter: the submodules first (as the CLI or a test would), then the public names
    code = (
        "import importlib, pkgutil, edlae_dask\n"
        "for m in pkgutil.walk_packages(edlae_dask.__path__, 'edlae_dask.'):\n"
        "    importlib.import_module(m.name)\n"
        "from edlae_dask import ingest, score, train, evaluate, open_factors, open_interactions, EDLAE\n"
        "for f in (ingest, score, train, evaluate, open_factors, open_interactions, EDLAE):\n"
        "    assert callable(f), f\n"
        "assert ingest.__module__ == 'edlae_dask.ingestion.pipeline', ingest\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_lazy_names_point_at_their_defining_modules():
    for name, module in edlae_dask._LAZY.items():
        assert getattr(edlae_dask, name) is getattr(importlib.import_module(module), name), name
