"""Where a command writes: one check of an output path, made before any work and creating nothing.

    check_destination(args.out, "directory", "--out")    # eval, analyze, reproduce, train, convert, tiny
    check_destination(args.json, "file", "--json")       # plan --json, generate --out

A directory that exists is fine (a run resumes into its own directory); a file that exists is
overwritten. Anything else that would fail later, after minutes of loading or training, fails here
in one line naming the path: a file where a directory should be (or the reverse), a path under a
file, a directory the user may not write in (or on a read-only filesystem), and a path on a kernel
filesystem such as /proc or /sys, where root's permissions look fine but nothing can be created.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

from jaxrl.errors import JaxrlError

# Kernel interfaces, not storage: creating a file or directory there fails (or means something else).
KERNEL_FILESYSTEMS = frozenset(
    ("proc", "sysfs", "cgroup", "cgroup2", "devpts", "debugfs", "tracefs", "securityfs", "configfs", "pstore", "bpf")
)
MOUNTINFO = "/proc/self/mountinfo"


def check_destination(path: str | Path, kind: Literal["directory", "file"] = "directory", what: str = "--out") -> Path:
    """`path` as a Path when a `kind` can be written there; else a JaxrlError naming `what` and the path."""
    text = str(path)
    if not text:
        raise JaxrlError(f"{what} is empty; name a {kind} to write to")
    if "://" in text:
        raise JaxrlError(f"{what} {text} must be a local path")
    p = Path(text).expanduser()
    # os.path's tests never raise (Path.exists can, e.g. on a directory without search permission).
    if os.path.lexists(p) and not os.path.exists(p):
        raise JaxrlError(f"{what} {text} is a broken symbolic link")
    if os.path.exists(p):
        is_dir = os.path.isdir(p)
        if is_dir != (kind == "directory"):
            raise JaxrlError(f"{what} {text} is a {'directory' if is_dir else 'file'}, not a {kind}")
        if why := _unwritable(p, is_dir):
            raise JaxrlError(f"{what} {text} is not writable: {why}")
        return p
    above = _nearest_existing(p)
    if not os.path.isdir(above):
        what_it_is = "a file, not a directory" if os.path.isfile(above) else "not a directory"
        raise JaxrlError(f"{what} {text} cannot be created: {above} is {what_it_is}")
    if why := _unwritable(above, True):
        raise JaxrlError(f"{what} {text} cannot be created: {why}")
    return p


def _nearest_existing(path: Path) -> Path:
    """The deepest of `path`'s ancestors that exists ("a/../b" is not normalised: the OS does not either)."""
    absolute = path.absolute()
    return next((above for above in absolute.parents if os.path.lexists(above)), Path(absolute.anchor))


def _unwritable(path: Path, is_dir: bool) -> str | None:
    """Why nothing can be written in directory `path` (or to file `path`), or None."""
    mount, fstype = _filesystem(path)
    if fstype in KERNEL_FILESYSTEMS:
        return f"{mount} is a {fstype} filesystem (a kernel interface, not storage); choose another path"
    if not os.access(path, os.W_OK | (os.X_OK if is_dir else 0)):
        readonly = hasattr(os, "statvfs") and os.statvfs(path).f_flag & os.ST_RDONLY
        return f"{path} is on a read-only filesystem" if readonly else f"no permission to write to {path}"
    return None


def _filesystem(path: Path) -> tuple[str, str | None]:
    """(mount point, filesystem type) of `path` from the kernel's mount table; (path, None) where
    there is none to read (not Linux)."""
    try:
        lines = Path(MOUNTINFO).read_text().splitlines()
    except OSError:
        return str(path), None
    real = Path(os.path.realpath(path))
    best_mount, best_type = "", None
    for line in lines:  # "36 25 0:32 / /proc rw,relatime - proc proc rw": mount point 5th, type after " - "
        left, _, right = line.partition(" - ")
        fields = left.split()
        if len(fields) < 5 or not right:
            continue
        mount = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])  # "\040" is a space
        # the longest mount point holding `path` wins; of equal ones the later, mounted over the other
        if (real == Path(mount) or Path(mount) in real.parents) and len(mount) >= len(best_mount):
            best_mount, best_type = mount, right.split()[0]
    return best_mount or str(path), best_type
