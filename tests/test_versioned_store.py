"""The versioned-store helper (edlae_dask.io.versioned): format check, complete marker, pointer, pruning.

Every test builds a small real store (zarr v3 groups in tmp_path) and checks one rule.
"""

from __future__ import annotations

import os
import threading
import time

import fsspec
import numpy as np
import pytest
import zarr

from edlae_dask.errors import OutputExistsError, StoreFormatError
from edlae_dask.io._fs import Location, group_attrs, location
from edlae_dask.io.versioned import (
    StoreFormat,
    Versions,
    by_created,
    check_format,
    is_complete,
    mark_complete,
    move_into_place,
    open_group,
    write_object,
)

FMT = StoreFormat("edlae-dask/test", 3, "test store", foreign_fix="Pass a test store",
                  version_fix="Write it again with this version", incomplete_fix="Run the writer again")


def versions(root, **kwargs) -> Versions:
    return Versions(location(root), "LATEST", "versions", valid=lambda name: name.startswith("v"),
                    what="a test version", **kwargs)


def make_group(where, *, complete: bool = True, fmt: StoreFormat = FMT, **attrs) -> Location:
    """A zarr v3 group holding one array; stamped with ``fmt`` and, with ``complete``, marked complete."""
    loc = location(where)
    group = loc.open_group("w")
    group.create_array("x", shape=(3,), dtype="<f8")[...] = np.arange(3.0)
    stamped = fmt.stamp(attrs)
    if complete:
        mark_complete(group, stamped)
    else:
        group.attrs.update(stamped)
    return loc


def make_version(root, name: str, **kwargs) -> Location:
    return make_group(versions(root).child(name), **kwargs)


def age_files(loc: Location, seconds: float) -> None:
    """Set the modification time of everything under ``loc`` to ``seconds`` ago (as if nothing wrote since)."""
    then = time.time() - seconds
    for folder, _, files in os.walk(loc.url):
        for f in files:
            os.utime(os.path.join(folder, f), (then, then))


# --------------------------------------------------------------------------- format check


def test_the_format_check_returns_the_attributes_of_a_complete_store_of_its_format(tmp_path):
    attrs = group_attrs(make_group(tmp_path / "s", n=7))
    assert check_format(attrs, tmp_path / "s", FMT, complete=True)["n"] == 7


def test_the_format_check_refuses_a_foreign_format_and_names_it_and_the_fix(tmp_path):
    attrs = group_attrs(make_group(tmp_path / "s", fmt=StoreFormat("someone-else/thing", 3, "thing")))
    message = (r"s is not an edlae-dask test store: its 'format' attribute is 'someone-else/thing', "
               r"expected 'edlae-dask/test'\. Pass a test store")
    with pytest.raises(StoreFormatError, match=message):
        check_format(attrs, tmp_path / "s", FMT)


def test_the_format_check_refuses_no_group_at_all_with_the_fix(tmp_path):
    with pytest.raises(StoreFormatError, match=r"is not an edlae-dask test store: there is no zarr v3 group there\. "
                                               r"Pass a test store"):
        check_format(group_attrs(tmp_path / "nothing"), tmp_path / "nothing", FMT)


@pytest.mark.parametrize(("found", "age"), [(4, "newer"), (2, "older")])
def test_the_format_check_refuses_another_format_version_saying_which_way_and_the_fix(tmp_path, found, age):
    attrs = group_attrs(make_group(tmp_path / "s", fmt=StoreFormat(FMT.name, found, FMT.what)))
    message = (rf"s is a test store of format_version {found}, but this edlae-dask \(.*\) reads format_version 3 "
               rf"only \(format version {found} is from an? {age} edlae-dask\)\. Write it again with this version")
    with pytest.raises(StoreFormatError, match=message):
        check_format(attrs, tmp_path / "s", FMT)


def test_the_version_message_says_what_the_code_does_with_the_store(tmp_path):
    writes = StoreFormat(FMT.name, 1, FMT.what, access="reads and writes")
    with pytest.raises(StoreFormatError, match="format_version 3, but .* reads and writes format_version 1 only"):
        check_format(group_attrs(make_group(tmp_path / "s")), tmp_path / "s", writes)


def test_the_format_is_checked_before_the_version(tmp_path):
    attrs = group_attrs(make_group(tmp_path / "s", fmt=StoreFormat("someone-else/thing", 99, "thing")))
    with pytest.raises(StoreFormatError, match="not an edlae-dask test store"):
        check_format(attrs, tmp_path / "s", FMT)


def test_a_directory_that_is_not_a_zarr_group_is_refused_on_opening_with_the_fix(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "notes.txt").write_text("hi")
    with pytest.raises(StoreFormatError, match=r"d is not a zarr v3 group, so not a test store \(.*\)\. "
                                               r"Pass a test store"):
        open_group(location(tmp_path / "d"), FMT)


# --------------------------------------------------------------------------- complete marker


def test_a_store_without_its_complete_marker_is_never_read(tmp_path):
    attrs = group_attrs(make_group(tmp_path / "s", complete=False))
    with pytest.raises(StoreFormatError, match=r"s is an incomplete test store \(no 'complete' marker\).*"
                                               r"Run the writer again"):
        check_format(attrs, tmp_path / "s", FMT, complete=True)


def test_the_marker_is_not_required_where_completeness_is_judged_otherwise(tmp_path):
    # recommendations stores: done when every shard's marker is there, not by a store-wide marker
    attrs = group_attrs(make_group(tmp_path / "s", complete=False))
    assert check_format(attrs, tmp_path / "s", FMT) == attrs


def test_mark_complete_sets_the_attributes_and_the_marker(tmp_path):
    group = zarr.open_group(str(tmp_path / "s"), mode="w", zarr_format=3)
    assert not is_complete(group_attrs(tmp_path / "s"))
    mark_complete(group, FMT.stamp(n=7))
    attrs = group_attrs(tmp_path / "s")
    assert is_complete(attrs)
    assert (attrs["n"], attrs["format"], attrs["format_version"]) == (7, "edlae-dask/test", 3)
    assert {"created", "code_version"} <= set(attrs)


def test_no_group_is_not_complete(tmp_path):
    assert not is_complete(group_attrs(tmp_path / "nothing"))


# --------------------------------------------------------------------------- local atomic writes


def test_write_object_replaces_the_content_whole_and_leaves_no_temporary_file(tmp_path):
    target = location(tmp_path / "folder" / "LATEST")
    write_object(target, b"v1\n")
    write_object(target, b"v2\n")
    assert target.read_bytes() == b"v2\n"
    assert os.listdir(tmp_path / "folder") == ["LATEST"]


def test_move_into_place_replaces_an_existing_store_with_the_new_complete_one(tmp_path):
    make_group(tmp_path / "s", n=1)
    make_group(tmp_path / ".s.tmp", n=2)
    move_into_place(tmp_path / ".s.tmp", tmp_path / "s", check_replaceable=lambda t: None)
    assert group_attrs(tmp_path / "s")["n"] == 2
    assert os.listdir(tmp_path) == ["s"]  # neither the work directory nor the old one is left


def test_move_into_place_leaves_the_target_alone_when_it_may_not_be_replaced(tmp_path):
    make_group(tmp_path / "s", n=1)
    make_group(tmp_path / ".s.tmp", n=2)

    def refuse(target):
        raise OutputExistsError(f"{target} is not ours")

    with pytest.raises(OutputExistsError, match="not ours"):
        move_into_place(tmp_path / ".s.tmp", tmp_path / "s", check_replaceable=refuse)
    assert group_attrs(tmp_path / "s")["n"] == 1


def test_move_into_place_without_a_check_never_replaces_anything(tmp_path):
    make_group(tmp_path / "s", n=1)
    make_group(tmp_path / ".s.tmp", n=2)
    with pytest.raises(OutputExistsError, match="refusing to replace"):
        move_into_place(tmp_path / ".s.tmp", tmp_path / "s")
    assert group_attrs(tmp_path / "s")["n"] == 1


# --------------------------------------------------------------------------- pointer


def test_publish_names_the_version_and_returns_the_one_named_before(tmp_path):
    for name in ("v1", "v2"):
        make_version(tmp_path, name)
    vs = versions(tmp_path)
    assert vs.read() is None and vs.publish("v1") is None
    assert vs.publish("v2") == "v1"
    assert vs.read() == "v2" and vs.published() == vs.child("v2")
    assert (tmp_path / "LATEST").read_text() == "v2\n"


def test_a_reader_sees_the_old_or_the_new_pointer_never_a_partial_one(tmp_path):
    names = ["v1" + "a" * 150, "v2" + "b" * 150]  # long names: a torn write would show
    for name in names:
        make_version(tmp_path, name)
    vs = versions(tmp_path)
    vs.publish(names[0])
    seen, errors, stop = set(), [], threading.Event()

    def read():
        while not stop.is_set():
            try:
                seen.add(vs.read())
            except StoreFormatError as exc:  # what a partial pointer would give
                errors.append(exc)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for i in range(300):
            vs.publish(names[i % 2])
    finally:
        stop.set()
        reader.join()
    assert not errors and seen == set(names)
    assert sorted(os.listdir(tmp_path)) == ["LATEST", "versions"]  # no temporary pointer left


def test_a_pointer_that_names_no_version_is_refused(tmp_path):
    (tmp_path / "LATEST").write_text("../../etc\n")
    with pytest.raises(StoreFormatError, match=r"LATEST holds '\.\./\.\./etc', not the name of a test version.*"
                                               r"Publish again"):
        versions(tmp_path).read()


def test_publishing_over_a_malformed_pointer_rewrites_it(tmp_path):
    make_version(tmp_path, "v1")
    (tmp_path / "LATEST").write_text("garbage\n")
    assert versions(tmp_path).publish("v1") is None
    assert versions(tmp_path).read() == "v1"


def test_under_a_url_the_pointer_is_one_object(request):
    root = f"memory://{request.node.name}"
    make_version(root, "v1")
    try:
        versions(root).publish("v1")
        assert fsspec.filesystem("memory").cat_file(f"/{request.node.name}/LATEST") == b"v1\n"
        assert versions(root).read() == "v1"
    finally:
        location(root).remove()


# --------------------------------------------------------------------------- pruning


def test_pruning_keeps_the_newest_complete_versions_and_every_newer_one(tmp_path):
    make_version(tmp_path, "v1")
    make_version(tmp_path, "v2", complete=False)  # a publish that died long ago
    make_version(tmp_path, "v3")
    make_version(tmp_path, "v4")
    make_version(tmp_path, "v5", complete=False)  # a publish still writing
    removed = versions(tmp_path).prune(current="v4", keep=2)
    assert removed == ["v1", "v2"] and versions(tmp_path).names() == ["v3", "v4", "v5"]


def test_incomplete_versions_do_not_count_towards_keep(tmp_path):
    make_version(tmp_path, "v1")
    make_version(tmp_path, "v2", complete=False)
    make_version(tmp_path, "v3", complete=False)
    make_version(tmp_path, "v4")
    versions(tmp_path).prune(current="v4", keep=2)
    assert versions(tmp_path).names() == ["v1", "v2", "v3", "v4"]


def test_pruning_keeps_the_version_the_pointer_named_before(tmp_path):
    for name in ("v1", "v2", "v3"):
        make_version(tmp_path, name)
    versions(tmp_path).prune(current="v3", previous="v1")
    assert versions(tmp_path).names() == ["v1", "v3"]


def test_pruning_without_an_age_removes_versions_newer_than_the_current_one_too(tmp_path):
    for name in ("v1", "v2", "v3"):
        make_version(tmp_path, name)
    versions(tmp_path).prune(current="v2", age=None)
    assert versions(tmp_path).names() == ["v2"]


def test_pruning_with_a_grace_period_leaves_versions_written_to_recently(tmp_path):
    for name in ("v1", "v2", "v3"):
        make_version(tmp_path, name)
    age_files(versions(tmp_path).child("v1"), 7200)  # nothing wrote to v1 for two hours, to v2 just now
    removed = versions(tmp_path).prune(current="v3", age=None, idle_s=3600)
    assert removed == ["v1"] and versions(tmp_path).names() == ["v2", "v3"]


def test_pruning_never_touches_what_is_not_listed_as_a_version(tmp_path):
    make_group(versions(tmp_path).child(".tmp-v0"), complete=False)  # a local publish under way
    make_version(tmp_path, "v1")
    versions(tmp_path, listed=lambda name: name.startswith("v")).prune(current="v1", age=None)
    assert sorted(os.listdir(tmp_path / "versions")) == [".tmp-v0", "v1"]


def test_pruning_by_creation_time_removes_only_our_versions_made_before_the_current_one(tmp_path):
    vs = versions(tmp_path)
    make_group(vs.child("v-foreign"), fmt=StoreFormat("someone-else/thing", 1, "thing"))  # older, not ours
    os.makedirs(vs.child("v-bare").url)  # no attributes yet: may be being created right now
    time.sleep(0.01)
    make_version(tmp_path, "v-older")
    time.sleep(0.01)
    make_version(tmp_path, "v-current")
    time.sleep(0.01)
    make_version(tmp_path, "v-newer")  # a concurrent run's, created after ours
    removed = vs.prune(current="v-current", age=by_created(FMT))
    assert removed == ["v-older"]
    assert vs.names() == ["v-bare", "v-current", "v-foreign", "v-newer"]


def test_an_incomplete_version_the_pointer_names_is_refused(tmp_path):
    make_version(tmp_path, "v1", complete=False)
    vs = versions(tmp_path)
    vs.publish("v1")  # only a buggy or tampered writer does this; the reader still checks
    with pytest.raises(StoreFormatError, match="incomplete test store"):
        check_format(group_attrs(vs.published()), vs.published(), FMT, complete=True)
