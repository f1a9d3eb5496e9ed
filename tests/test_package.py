"""The package's public names and its version."""

import edlae_dask


def test_every_public_name_resolves():
    for name in edlae_dask.__all__:
        assert getattr(edlae_dask, name) is not None, name


def test_version_matches_the_installed_metadata():
    from importlib.metadata import version

    assert edlae_dask.__version__ == version("edlae-dask")
