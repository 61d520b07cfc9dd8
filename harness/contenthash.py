"""Content hashes of the files that produce a trace, for cache keys (harness/pipeline.py).

A key must change whenever the bytes behind it do (a bundle rebuilt at the same path), so files
are hashed by content, never by name or time. Hashing a 27B bundle takes a while, and one run asks
for the same file's hash more than once (the candidate and the control, the key and the
provenance), so a hash is remembered for the rest of the process under the file's identity and
state: (device, inode, size, mtime_ns, ctime_ns). Any write changes mtime and ctime, a file
replaced by rename has another inode, so a remembered hash is never one of other bytes.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from .errors import InputError
from .fileio import sha256_file

_memo: dict[tuple[str, int, int, int, int, int], str] = {}


def _identity(st: os.stat_result, path: str) -> tuple[str, int, int, int, int, int]:
    return (path, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a regular file's bytes, remembered within this process while the file is unchanged."""
    p = os.path.realpath(path)
    try:
        before = os.stat(p)
        key = _identity(before, p)
        if key in _memo:
            return _memo[key]
        digest = sha256_file(p)
        after = os.stat(p)
    except OSError as e:
        raise InputError(f"{path}: cannot read to hash it ({e.strerror or e})") from None
    # written to while being hashed: the digest belongs to no single state, so it is not remembered
    if _identity(after, p) == key:
        _memo[key] = digest
    return digest


def tree_sha256(folder: str | os.PathLike) -> str:
    """sha256 over every regular file under `folder`: relative path and content sha256, in sorted
    order (symlinks to files are followed; a folder's layout and every byte count)."""
    root = Path(folder)
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root, onerror=_raise):
        dirnames.sort()
        for name in sorted(filenames):
            f = Path(dirpath) / name
            if not f.is_file():
                continue  # a FIFO or a dangling link holds no content a runtime reads as the model
            rel = f.relative_to(root).as_posix()
            h.update(rel.encode("utf-8", "surrogateescape") + b"\0")
            h.update(file_sha256(f).encode("ascii") + b"\n")
    return h.hexdigest()


def _raise(err: OSError) -> None:
    raise InputError(f"{err.filename}: cannot read to hash it ({err.strerror or err})")
