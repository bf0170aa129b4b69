"""The one check of an output path (jaxrl.destinations): what passes, what fails and why, and that
it creates nothing. Every writing command runs it against bad paths in tests/test_faults.py."""

from __future__ import annotations

import os

import pytest

from jaxrl import destinations
from jaxrl.destinations import check_destination
from jaxrl.errors import JaxrlError


def listing(root):
    return sorted((str(p), p.lstat().st_mtime_ns) for p in root.rglob("*")) + [root.stat().st_mtime_ns]


@pytest.fixture
def tree(tmp_path):
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "a_dir").mkdir()
    return tmp_path


def test_writable_destinations_pass_and_nothing_is_created(tree):
    before = listing(tree)
    assert check_destination(tree / "new" / "deeper" / "run") == tree / "new" / "deeper" / "run"
    assert check_destination(tree / "a_dir") == tree / "a_dir"  # a run resumes into its directory
    assert check_destination(tree / "a_file", "file", "--json") == tree / "a_file"  # overwritten
    assert check_destination(tree / "new" / "plan.json", "file", "--json") == tree / "new" / "plan.json"
    assert listing(tree) == before


@pytest.mark.parametrize(
    "path, kind, message",
    [
        ("{tree}/a_file", "directory", r"^--out .*/a_file is a file, not a directory$"),
        ("{tree}/a_dir", "file", r"^--out .*/a_dir is a directory, not a file$"),
        ("{tree}/a_file/run", "directory", r"cannot be created: .*/a_file is a file, not a directory$"),
        ("{tree}/a_file/x/y.json", "file", r"cannot be created: .*/a_file is a file, not a directory$"),
        ("{tree}/a_file/../run", "directory", r"cannot be created: .*/a_file is a file"),
        ("{tree}/dangling", "directory", r"is a broken symbolic link$"),
        ("", "directory", r"^--out is empty"),
        ("gs://bucket/run", "directory", r"^--out gs://bucket/run must be a local path$"),
        ("/proc/jaxrl-out", "directory", r"^--out /proc/jaxrl-out cannot be created: /proc is a proc filesystem"),
        ("/proc/self/x.json", "file", r"cannot be created: /proc is a proc filesystem"),
        ("/sys/jaxrl-out", "directory", r"^--out /sys/jaxrl-out cannot be created: /sys is a sysfs filesystem"),
        ("/sys", "directory", r"^--out /sys is not writable: /sys is a sysfs filesystem"),
    ],
    ids=["file", "directory", "under-a-file", "deep-under-a-file", "dotdot", "dangling", "empty", "remote"]
    + ["proc", "proc-self", "sys-under", "sys-itself"],
)
def test_unwritable_destinations_fail_naming_the_path(tree, path, kind, message):
    os.symlink(tree / "nowhere", tree / "dangling")
    before = listing(tree)
    with pytest.raises(JaxrlError, match=message):
        check_destination(path.format(tree=tree), kind)
    assert listing(tree) == before


def test_permission_and_read_only_for_a_user_who_is_not_root(tree, monkeypatch):
    monkeypatch.setattr(destinations.os, "access", lambda path, mode: False)
    with pytest.raises(JaxrlError, match=r"run cannot be created: no permission to write to .*a_dir$"):
        check_destination(tree / "a_dir" / "run", what="--out")
    with pytest.raises(JaxrlError, match=r"a_file is not writable: no permission to write to .*a_file$"):
        check_destination(tree / "a_file", "file")

    class ReadOnly:
        f_flag = os.ST_RDONLY

    monkeypatch.setattr(destinations.os, "statvfs", lambda path: ReadOnly())
    with pytest.raises(JaxrlError, match=r"cannot be created: .*a_dir is on a read-only filesystem$"):
        check_destination(tree / "a_dir" / "run")


def test_mount_table_escapes_and_its_absence(tree, monkeypatch):
    odd = tree / "with space"
    odd.mkdir()
    table = tree / "mountinfo"
    table.write_text(
        "22 1 0:21 / / rw - ext4 /dev/vda rw\n"
        f"23 22 0:22 / {str(odd).replace(' ', chr(92) + '040')} rw,relatime - proc proc rw\n"
    )
    monkeypatch.setattr(destinations, "MOUNTINFO", str(table))
    with pytest.raises(JaxrlError, match=r"cannot be created: .*/with space is a proc filesystem"):
        check_destination(odd / "run")
    assert check_destination(tree / "a_dir" / "run") == tree / "a_dir" / "run"
    monkeypatch.setattr(destinations, "MOUNTINFO", str(tree / "no_such_table"))  # not Linux: no type to read
    assert check_destination(odd / "run") == odd / "run"
