"""Safe file writes, the inputs a run must not overwrite, and content hashes.

Every output goes through `atomic_path`:

- a regular file (or a new name) is written to a temporary file in the destination folder, fsynced,
  and renamed into place, then the folder is fsynced: a failed, interrupted or power-cut run never
  leaves a half-written trace, verdict or report under the real name, and the old file survives a
  full disk. A new file gets the umask's mode (0666 & ~umask), an existing file keeps its mode;
- a symlink to a regular file is written *through*: the target is replaced atomically as above and
  the link is kept (a dangling link is refused: flipgate does not create files at a link's whim);
- a FIFO or a character device (`/dev/null`, `/dev/stdout`, a named pipe) is written directly, never
  replaced by a regular file; a block device, a socket or a folder is refused;
- `-` means standard output (the bytes are copied there once the block succeeds);
- a path that names an input of the run (`note_input`; any other name for the same file: relative,
  absolute, `..`, a hard link or a symlink) is refused before anything is written.

Write errors of the environment (disk full, read-only file system, a parent that is a file) become
an `InputError` naming the path: exit 2, one line, and the old file is left as it was.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import stat
import sys
import tempfile
from pathlib import Path
from typing import Iterable, Iterator, Mapping

from .errors import InputError

_CHUNK = 1 << 22
STDOUT = "-"

# errno values raised while filling the temporary file that say "the destination cannot take it"
_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS)


# ---------------------------------------------------------------------------------------------
# inputs of the current run

class _Inputs:
    """The files a run reads, by identity (st_dev, st_ino) and by real path, while a scope is open."""

    def __init__(self) -> None:
        self.depth = 0
        self.by_id: dict[tuple[int, int], str] = {}
        self.by_real: dict[str, str] = {}

    def add(self, path: str | os.PathLike, label: str | None = None) -> None:
        if self.depth == 0:
            return
        name = label or str(path)
        real = os.path.realpath(path)
        self.by_real.setdefault(real, name)
        with contextlib.suppress(OSError):
            st = os.stat(path)
            if stat.S_ISREG(st.st_mode):
                self.by_id.setdefault((st.st_dev, st.st_ino), name)

    def forget(self, path: str | os.PathLike) -> None:
        self.by_real.pop(os.path.realpath(path), None)
        with contextlib.suppress(OSError):
            st = os.stat(path)
            self.by_id.pop((st.st_dev, st.st_ino), None)

    def find(self, path: str | os.PathLike) -> str | None:
        if self.depth == 0:
            return None
        hit = self.by_real.get(os.path.realpath(path))
        if hit is not None:
            return hit
        with contextlib.suppress(OSError):
            st = os.stat(path)
            return self.by_id.get((st.st_dev, st.st_ino))
        return None


_INPUTS = _Inputs()


@contextlib.contextmanager
def input_scope() -> Iterator[None]:
    """While open, `note_input` records the files read, and `atomic_path` refuses to replace them.

    The CLI opens one per command; library callers (tests, notebooks) are not affected unless they
    open one themselves. Nested scopes share one record, cleared when the outermost closes.
    """
    _INPUTS.depth += 1
    try:
        yield
    finally:
        _INPUTS.depth -= 1
        if _INPUTS.depth == 0:
            _INPUTS.by_id.clear()
            _INPUTS.by_real.clear()


def note_input(path: str | os.PathLike, label: str | None = None) -> None:
    """Record `path` as an input of the current run (no effect outside `input_scope`)."""
    _INPUTS.add(path, label)


def forget_input(path: str | os.PathLike) -> None:
    """The run is done with `path` and may replace it (e.g. a resume part found stale)."""
    _INPUTS.forget(path)


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths name one file: the same real path, or the same inode (a hard link)."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_outputs(outputs: Mapping[str, str | os.PathLike | None],
                  inputs: Mapping[str, str | os.PathLike | Iterable | None]) -> None:
    """Refuse (InputError, one line naming both) an output that names an input or another output.

    `outputs` and `inputs` map a label (e.g. `--out`) to a path, a list of paths or None.
    Standard output (`-`) collides with nothing.
    """
    def flat(items):
        for label, value in items:
            if value is None:
                continue
            values = [value] if isinstance(value, (str, os.PathLike)) else list(value)
            for v in values:
                if v is not None and str(v) != STDOUT:
                    yield label, str(v)

    ins = list(flat(inputs.items()))
    outs = list(flat(outputs.items()))
    for i, (olabel, out) in enumerate(outs):
        for ilabel, inp in ins:
            if same_file(out, inp):
                raise InputError(f"{olabel} {out}: is the input {ilabel} {inp}; refusing to overwrite an input "
                                 "(write the output elsewhere)")
        for olabel2, out2 in outs[:i]:
            if same_file(out, out2):
                raise InputError(f"{olabel} {out}: is also the output {olabel2} {out2}; give each output its own file")


# ---------------------------------------------------------------------------------------------
# writing

def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every file system lets a folder be opened or synced
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _file_above(dest: Path) -> Path | None:
    """The first existing ancestor of `dest` that is not a folder, if any."""
    for parent in reversed(dest.parents):
        if parent.exists() and not parent.is_dir():
            return parent
    return None


def write_error(dest: str | os.PathLike, e: OSError) -> InputError:
    """The one-line error for an environment failure while writing `dest`."""
    if e.errno in (errno.ENOTDIR, errno.EEXIST):
        above = _file_above(Path(dest))
        if above is not None:
            return InputError(f"{dest}: {above} is a file, not a folder")
    what = e.strerror or str(e)
    hint = "; the old file, if any, is kept" if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) else ""
    return InputError(f"{dest}: cannot write ({what}){hint}")


def resolve_output(path: str | os.PathLike) -> tuple[Path, str]:
    """Where a write to `path` really lands, and how: ('replace', the regular file's path — a symlink's
    target), or ('direct', a FIFO or character device). Refuses folders and other special files."""
    dest = Path(path)
    try:
        lst = os.lstat(dest)
    except FileNotFoundError:
        return dest, "replace"
    except OSError as e:  # a parent that is a file, a name too long, a loop
        raise write_error(dest, e) from None
    if stat.S_ISLNK(lst.st_mode):
        try:
            st = os.stat(dest)
        except FileNotFoundError:
            raise InputError(f"{dest}: is a symlink to a missing file ({os.readlink(dest)}); "
                             "refusing to create a file through it") from None
        except OSError as e:
            raise write_error(dest, e) from None
        if stat.S_ISREG(st.st_mode):
            return Path(os.path.realpath(dest)), "replace"
        mode = st.st_mode
    else:
        mode = lst.st_mode
    if stat.S_ISREG(mode):
        return dest, "replace"
    if stat.S_ISDIR(mode):
        raise InputError(f"{dest}: is a folder; name the file to write")
    if stat.S_ISFIFO(mode) or stat.S_ISCHR(mode):
        return dest, "direct"
    kind = "a block device" if stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode) else "a special file"
    raise InputError(f"{dest}: is {kind}; refusing to write to it")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path; when the block succeeds, put its content at `path` (see module doc)."""
    if str(path) == STDOUT:
        with _to_stdout() as tmp:
            yield tmp
        return
    owner = _INPUTS.find(path)
    if owner is not None:
        raise InputError(f"{path}: is an input of this run ({owner}); refusing to overwrite it")
    dest, how = resolve_output(path)
    if how == "direct":
        with _direct(dest) as tmp:
            yield tmp
        return
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    except OSError as e:
        raise write_error(dest, e) from None
    tmp_path = Path(tmp)
    try:
        try:
            old = os.stat(dest)
            mode = stat.S_IMODE(old.st_mode)
        except FileNotFoundError:
            old, mode = None, 0o666 & ~_umask()
        os.fchmod(fd, mode)
        if old is not None and os.geteuid() == 0:  # root rewriting someone's file keeps it theirs
            with contextlib.suppress(OSError):
                os.fchown(fd, old.st_uid, old.st_gid)
        os.close(fd)
        fd = -1
        try:
            yield tmp_path
        except OSError as e:
            if e.errno in _FULL:
                raise write_error(dest, e) from None
            raise
        _INPUTS.forget(tmp_path)  # a writer that re-reads its own temporary file made it no input
        try:
            _fsync_file(tmp_path)
            os.replace(tmp_path, dest)
        except OSError as e:
            raise write_error(dest, e) from None
        _fsync_dir(dest.parent)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


@contextlib.contextmanager
def _scratch() -> Iterator[Path]:
    fd, tmp = tempfile.mkstemp(prefix=".flipgate-out.", suffix=".part")
    os.close(fd)
    try:
        yield Path(tmp)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _copy_into(src: Path, out) -> None:
    with open(src, "rb") as f:
        shutil.copyfileobj(f, out, _CHUNK)
    out.flush()


@contextlib.contextmanager
def _direct(dest: Path) -> Iterator[Path]:
    # A FIFO or device cannot be renamed onto (that would replace it with a regular file): the
    # content is built aside, then written into it as it is.
    with _scratch() as tmp:
        yield tmp
        try:
            with open(dest, "wb") as out:
                _copy_into(tmp, out)
        except OSError as e:
            raise write_error(dest, e) from None


@contextlib.contextmanager
def _to_stdout() -> Iterator[Path]:
    with _scratch() as tmp:
        yield tmp
        out = sys.stdout
        buf = getattr(out, "buffer", None)
        if buf is None or out.isatty():  # text through the stream (a terminal gets it escaped)
            out.write(tmp.read_bytes().decode("utf-8", "replace"))
            out.flush()
        else:
            out.flush()
            _copy_into(tmp, buf)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def check_output_path(path: str | os.PathLike, label: str = "--out") -> None:
    """Refuse, before any work, an output path that cannot be written: a folder, a path under a file,
    a folder that cannot be written, a block device or socket, a dangling symlink."""
    if str(path) == STDOUT:
        return
    try:
        dest, how = resolve_output(path)
    except InputError as e:
        raise InputError(f"{label} {e}") from None
    if how == "direct":
        return
    parent = dest.parent
    while not parent.exists():  # the first folder that exists is the one a mkdir happens in
        if parent.is_symlink() or parent == parent.parent:
            break
        parent = parent.parent
    if parent.exists() and not parent.is_dir():
        raise InputError(f"{label} {path}: {parent} is a file, not a folder")
    if parent.is_dir() and not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"{label} {path}: the folder {parent} is not writable")


def check_output_dir(path: str | os.PathLike, label: str = "--report-dir") -> None:
    """Refuse a folder output that is an existing file (or lies under one) or cannot be written."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise InputError(f"{label} {path}: {label} must be a folder, and this is a file")
    parent = p
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if parent.exists() and not parent.is_dir():
        raise InputError(f"{label} {path}: {parent} is a file, not a folder")
    if parent.is_dir() and not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"{label} {path}: the folder {parent} is not writable")


def check_input_file(path: str | os.PathLike, label: str) -> None:
    """Refuse, before any work, an input file that does not exist, is a folder or cannot be read."""
    p = Path(path)
    if not p.exists():
        kind = "a dangling symlink" if p.is_symlink() else "no such file"
        raise InputError(f"{label} {path}: {kind}")
    if p.is_dir():
        raise InputError(f"{label} {path}: is a folder, not a file")
    if not os.access(p, os.R_OK):
        raise InputError(f"{label} {path}: not readable (permission denied)")


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
