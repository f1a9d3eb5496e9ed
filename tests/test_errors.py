"""Every error of the command line is one line on stderr with the problem and the fix; ``--debug`` shows the traceback.

Full disks and read-only file systems are real: a small tmpfs mounted in the test's folder (root only,
skipped elsewhere). Permission denied is real too: a read-only folder, with root's override of file
permissions dropped (``setpriv``) where the tests run as root.
"""

import errno
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from edlae_dask.cli import EXIT_INTERNAL_ERROR, cli
from edlae_dask.config import MAX_LAM, MAX_P, TrainParams
from edlae_dask.errors import (
    ParameterError,
    PathOption,
    StorageError,
    StoreFormatError,
    as_user_error,
    os_error,
)
from edlae_dask.io.versioned import check_new_file

# a line of the CLI's log (edlae_dask.cli._setup_logging): progress, not an error
LOG_LINE = re.compile(r"^\d\d:\d\d:\d\d (DEBUG|INFO|WARNING|ERROR|CRITICAL)\s")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A CSV of 3000 users x 400 items (about 60k rows: 480 kB of spill when ingested) and its store."""
    from edlae_dask.ingestion import ingest

    folder = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    users = np.r_[rng.integers(0, 3000, 60_000), np.arange(400)]
    items = np.r_[rng.integers(0, 400, 60_000), np.arange(400)]  # every item used
    csv = folder / "x.csv"
    pd.DataFrame({"user": users, "item": items}).to_csv(csv, index=False)
    ingest(str(csv), str(folder / "x.zarr"))
    return csv, folder / "x.zarr"


def _mount_tmpfs(path: Path, options: str) -> Path:
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    path.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    return path


@pytest.fixture
def full_disk(tmp_path):
    """A 256 KiB file system: smaller than the spill of ``data``, its factors (k=100) and its checkpoints."""
    mount = _mount_tmpfs(tmp_path / "small-disk", "size=256k")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.fixture
def read_only_disk(tmp_path):
    mount = _mount_tmpfs(tmp_path / "read-only", "ro,size=64k")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def _invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def _error_line(result, status: int = 1) -> str:
    """The one line the CLI printed for an error, after checking there was exactly one and no traceback."""
    assert not isinstance(result.exception, Exception), f"uncaught {result.exception!r}"  # only SystemExit
    stderr = result.stderr
    assert result.exit_code == status, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.strip() and not LOG_LINE.match(line)]
    assert len(lines) == 1, stderr[-3000:]
    return lines[0]


# --------------------------------------------------------------------------- the wording, without a CLI


@pytest.mark.parametrize(
    "exc, words",
    [
        (OSError(errno.ENOSPC, "No space left on device", "/d/f"), ["no space left on device writing /d/f",
                                                                    "free space", "--out"]),
        (PermissionError(errno.EACCES, "Permission denied", "/"), ["permission denied on /", "access", "--out"]),
        (OSError(errno.EROFS, "Read-only file system", "/d/f"), ["/d/f is on a read-only file system", "--out"]),
        (IsADirectoryError(errno.EISDIR, "Is a directory", "/d"), ["/d is a directory where a file is expected",
                                                                   "file path for --out"]),
        (NotADirectoryError(errno.ENOTDIR, "Not a directory", "/d/f"), ["a file where a directory is expected"]),
        (FileNotFoundError(errno.ENOENT, "No such file", "rel/x"), ["rel/x does not exist", "relative paths"]),
        (OSError("400000 requested and 262144 written"), ["no space left on device"]),  # numpy's short write
    ],
)
def test_os_errors_name_the_problem_the_path_and_the_fix(exc, words):
    error = os_error(exc, option="--out")
    assert isinstance(error, StorageError) and "\n" not in str(error)
    for w in words:
        assert w in str(error)


def test_a_wrapped_os_error_and_a_lost_path_still_name_the_output():
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")  # a worker's write: no file name, no locals
        except OSError as exc:
            raise RuntimeError("store write failed") from exc
    except RuntimeError as exc:
        wrapped = exc
    error = as_user_error(wrapped, [PathOption("--interactions", "/in", False), PathOption("--out", "/o/f", True)])
    assert isinstance(error, StorageError)
    assert "no space left on device writing /o/f" in str(error) and "another --out" in str(error)
    assert as_user_error(KeyError("a bug")) is None


def test_the_path_of_a_failed_write_is_found_in_the_traceback(tmp_path):
    def write(path):
        raise OSError(errno.ENOSPC, "No space left on device")  # as zarr's LocalStore._put(path, ...) does

    try:
        write(tmp_path / "out" / "U" / "c" / "0")
    except OSError as exc:
        error = as_user_error(exc, [PathOption("--out", str(tmp_path / "out"), True)])
    assert f"writing {tmp_path / 'out' / 'U' / 'c' / '0'}: free space" in str(error) and "--out" in str(error)


def test_extreme_lambda_and_p_are_refused_by_the_model_parameters():
    TrainParams(lam=MAX_LAM, p=MAX_P).validate()  # the bounds themselves are fine
    for bad in ({"lam": 1e300}, {"lam": float("inf")}, {"lam": MAX_LAM * 10}, {"p": 1 - 1e-7}, {"p": 1.0}):
        with pytest.raises(ParameterError, match="every score is ≈ 0"):
            TrainParams(**bad).validate()


def test_an_output_file_is_checked_before_the_work(tmp_path):
    assert check_new_file(tmp_path / "report.json", overwrite=False) == str(tmp_path / "report.json")
    assert check_new_file(tmp_path / "new" / "report.json", overwrite=False)  # its folder is made when written
    with pytest.raises(StorageError, match="is a directory where a file is expected"):
        check_new_file(tmp_path, overwrite=True)
    (tmp_path / "file").write_text("")
    with pytest.raises(StorageError, match="a file where a directory is expected"):
        check_new_file(tmp_path / "file" / "report.json", overwrite=False)


# --------------------------------------------------------------------------- full disk


def test_ingest_onto_a_full_disk(data, full_disk):
    csv, _ = data
    line = _error_line(_invoke("ingest", csv, "--out", full_disk / "x.zarr"))
    assert line.startswith("error: no space left on device writing ") and str(full_disk) in line
    assert "free space" in line and "--out" in line
    assert os.listdir(full_disk) == []  # the spill went with the error


def test_publish_onto_a_full_disk(data, full_disk):
    _, store = data
    line = _error_line(_invoke("train", "--interactions", store, "--out", full_disk / "f", "--k", 100,
                               "--cluster", "threads"))
    assert "no space left on device writing " in line and str(full_disk / "f") in line and "another --out" in line


def test_publish_onto_a_full_disk_from_dask_workers(data, full_disk):
    """The workers write U and V: the OSError comes back from a worker process, without its frames' locals."""
    _, store = data
    line = _error_line(_invoke("train", "--interactions", store, "--out", full_disk / "f", "--k", 100,
                               "--workers", 1))
    assert "no space left on device writing " in line and str(full_disk / "f") in line and "another --out" in line


def test_checkpoints_onto_a_full_disk(data, full_disk, tmp_path):
    _, store = data
    line = _error_line(_invoke("train", "--interactions", store, "--out", tmp_path / "f", "--k", 5,
                               "--cluster", "threads", "--checkpoint-dir", full_disk / "ck"))
    assert "no space left on device writing " in line and str(full_disk / "ck") in line
    assert "another --checkpoint-dir" in line


# --------------------------------------------------------------------------- read-only, permission denied


def test_ingest_onto_a_read_only_file_system(data, read_only_disk):
    csv, _ = data
    line = _error_line(_invoke("ingest", csv, "--out", read_only_disk / "x.zarr"))
    assert "read-only file system" in line and str(read_only_disk) in line and "--out" in line


def test_evaluate_out_on_a_read_only_file_system_is_refused_before_the_work(data, read_only_disk, monkeypatch):
    _, store = data
    monkeypatch.setattr("edlae_dask.cluster.connect", _no_work)
    line = _error_line(_invoke("evaluate", "--interactions", store, "--k", 5, "--out", read_only_disk / "r.json"))
    assert "read-only file system" in line and "--out" in line


def _as_unprivileged() -> list[str]:
    """The prefix that runs a command without root's override of file permissions (none when not root)."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: permissions do not stop root")
    prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]
    if subprocess.run([*prefix, "true"], capture_output=True).returncode != 0:
        pytest.skip("setpriv cannot drop root's file-permission override here")
    return prefix


def test_ingest_into_a_read_only_folder_is_permission_denied(data, tmp_path):
    csv, _ = data
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        done = subprocess.run([*_as_unprivileged(), sys.executable, "-m", "edlae_dask", "ingest", str(csv), "--out",
                               str(folder / "x.zarr")], capture_output=True, text=True, timeout=120)
    finally:
        folder.chmod(0o755)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    lines = [line for line in done.stderr.splitlines() if line.strip() and not LOG_LINE.match(line)]
    assert len(lines) == 1, done.stderr[-3000:]
    assert "permission denied" in lines[0] and str(folder) in lines[0] and "--out" in lines[0]


# --------------------------------------------------------------------------- corrupt stores, bad specs


@pytest.mark.parametrize("where", ["threads", "workers"])
def test_a_truncated_chunk_is_one_line_naming_the_store(data, tmp_path, where):
    _, store = data
    broken = tmp_path / "broken.zarr"
    shutil.copytree(store, broken)
    chunks = [p for p in (broken / "shards").rglob("*") if p.is_file() and p.name != "zarr.json"]
    biggest = max(chunks, key=lambda p: p.stat().st_size)
    with open(biggest, "r+b") as fh:
        fh.truncate(biggest.stat().st_size // 3)
    cluster = ["--cluster", "threads"] if where == "threads" else ["--workers", 1]
    line = _error_line(_invoke("train", "--interactions", broken, "--out", tmp_path / "f", "--k", 5, *cluster))
    assert str(broken) in line and re.search("corrupt|truncated|checksum", line), line


def test_a_spec_that_is_not_utf8(tmp_path):
    spec = tmp_path / "train.yaml"
    spec.write_bytes(b"job: train\ninteractions: x.zarr\nout: f\n# caf\xe9 (latin-1)\n")
    for args in (["run", spec], ["train", "--spec", spec]):
        line = _error_line(_invoke(*args))
        assert "is not UTF-8" in line and str(spec) in line and "save it as UTF-8" in line


def test_a_spec_that_is_not_yaml_is_one_line(tmp_path):
    spec = tmp_path / "train.yaml"
    spec.write_text("job: train\n  out: [\n")
    line = _error_line(_invoke("run", spec))
    assert "is not valid YAML" in line and "line 2" in line


def test_an_unreadable_spec(tmp_path, monkeypatch):
    def denied(path, job):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr("edlae_dask.cli.load_job_spec", denied)
    (tmp_path / "x.yaml").write_text("job: train\n")
    line = _error_line(_invoke("train", "--spec", tmp_path / "x.yaml"))
    assert "permission denied on" in line and "x.yaml" in line


def test_a_missing_input_store(tmp_path):
    line = _error_line(_invoke("train", "--interactions", tmp_path / "nothing.zarr", "--out", tmp_path / "f",
                               "--cluster", "threads"))
    assert str(tmp_path / "nothing.zarr") in line


# --------------------------------------------------------------------------- checked before the work


def _no_work(*args, **kwargs):
    raise AssertionError("the command started its work before checking its options")


def test_evaluate_out_pointing_at_a_directory_is_refused_before_the_work(data, tmp_path, monkeypatch):
    _, store = data
    monkeypatch.setattr("edlae_dask.cluster.connect", _no_work)
    line = _error_line(_invoke("evaluate", "--interactions", store, "--k", 5, "--out", tmp_path))
    assert f"{tmp_path} is a directory where a file is expected" in line and "--out" in line


@pytest.mark.parametrize("args", [["--lam", "1e300"], ["--lam", "inf"], ["--p", "0.9999995"], ["--p", "1"]])
def test_train_refuses_extreme_lambda_and_p(data, tmp_path, args):
    _, store = data
    line = _error_line(_invoke("train", "--interactions", store, "--out", tmp_path / "f", "--cluster", "threads",
                               *args))
    assert f"'{args[0][2:]}' parameter" in line and "every score is ≈ 0" in line
    assert not (tmp_path / "f").exists()


def test_train_refuses_an_eigensolver_pass_count_that_would_run_for_days(data, tmp_path):
    _, store = data
    line = _error_line(_invoke("train", "--interactions", store, "--out", tmp_path / "f", "--cluster", "threads",
                               "--power-iters", "100000000"))
    assert "'n_power_iter' parameter" in line and "<= 100" in line
    assert not (tmp_path / "f").exists()


@pytest.mark.parametrize("args", [["--lam", "20", "1e300"], ["--p", "0.25", "0.9999999"]])
def test_evaluate_refuses_an_extreme_grid_before_the_work(data, monkeypatch, args):
    _, store = data
    monkeypatch.setattr("edlae_dask.evaluation.search.Evaluator", _no_work)
    line = _error_line(_invoke("evaluate", "--interactions", store, "--k", 5, "--cluster", "threads", *args))
    assert "every score is ≈ 0" in line


# --------------------------------------------------------------------------- --debug, internal errors


def test_debug_shows_the_traceback_of_a_user_error(tmp_path):
    spec = tmp_path / "train.yaml"
    spec.write_bytes(b"job: train\n\xff\n")
    r = _invoke("--debug", "run", spec)
    assert r.exit_code == 1 and "Traceback" in r.stderr and "UnicodeDecodeError" in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("error: job spec")


def test_an_internal_error_is_one_line_with_its_own_status(data, tmp_path, monkeypatch):
    def bug(*args, **kwargs):
        raise KeyError("a bug")

    monkeypatch.setattr("edlae_dask.ingestion.ingest", bug)
    csv, _ = data
    line = _error_line(_invoke("ingest", csv, "--out", tmp_path / "x.zarr"), status=EXIT_INTERNAL_ERROR)
    assert line == "internal error: KeyError: 'a bug'; rerun with --debug and report it"
    r = _invoke("--debug", "ingest", csv, "--out", tmp_path / "x.zarr")
    assert r.exit_code == EXIT_INTERNAL_ERROR and "Traceback" in r.stderr and "KeyError" in r.stderr
    assert r.stderr.strip().splitlines()[-1].endswith("report it with the traceback above")


def test_the_console_script_prints_one_line(tmp_path):
    spec = tmp_path / "train.yaml"
    spec.write_bytes(b"job: train\n\xff\n")
    done = subprocess.run([sys.executable, "-m", "edlae_dask", "run", str(spec)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 1 and done.stderr.count("\n") == 1 and "not UTF-8" in done.stderr, done.stderr


def test_corrupt_chunk_wording_without_a_path():
    try:
        _decode_chunk()
    except RuntimeError as exc:
        error = as_user_error(exc, [PathOption("--interactions", "/data/x.zarr", False)])
    assert isinstance(error, StoreFormatError)
    assert "a chunk of --interactions /data/x.zarr cannot be decoded" in str(error) and "re-create" in str(error)


def _decode_chunk():
    # a frame named like numcodecs' decoder, in a module of that name: what _decoding looks for
    code = compile("def decode(buf):\n    raise RuntimeError('Zstd decompression error: invalid input data')\n",
                   "numcodecs/zstd.pyx", "exec")
    namespace = {"__name__": "numcodecs.zstd"}
    exec(code, namespace)
    namespace["decode"](b"")
