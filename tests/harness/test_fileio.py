"""harness.fileio: how every output is written — never over an input or a special file, modes kept,
fsynced, and a full disk or an impossible path is one InputError with the old file intact."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from harness import fileio
from harness.errors import InputError
from harness.fileio import (atomic_path, check_input_file, check_output_path, check_outputs, input_scope, note_input,
                            write_text_atomic)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".part"))


# ---- modes ---------------------------------------------------------------------------------------

def test_a_new_file_gets_the_umask_mode_and_an_existing_file_keeps_its_mode(tmp_path):
    old = os.umask(0o022)
    try:
        new = tmp_path / "new.json"
        write_text_atomic(new, "{}")
        assert stat.S_IMODE(new.stat().st_mode) == 0o644  # mkstemp alone gives 0600
        os.umask(0o077)
        write_text_atomic(tmp_path / "private.json", "{}")
        assert stat.S_IMODE((tmp_path / "private.json").stat().st_mode) == 0o600
        kept = tmp_path / "kept.json"
        kept.write_text("old")
        kept.chmod(0o640)
        write_text_atomic(kept, "new")
        assert kept.read_text() == "new" and stat.S_IMODE(kept.stat().st_mode) == 0o640
    finally:
        os.umask(old)


# ---- durability ----------------------------------------------------------------------------------

def test_the_file_is_fsynced_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", str(dst)))
        return real_replace(src, dst)

    monkeypatch.setattr(fileio.os, "fsync", fsync)
    monkeypatch.setattr(fileio.os, "replace", replace)
    dest = tmp_path / "out.json"
    write_text_atomic(dest, "x")
    kinds = [e[0] for e in events]
    assert kinds == ["fsync", "replace", "fsync"], events
    assert events[0][1].startswith(str(tmp_path / ".out.json."))  # the temporary file, before its rename
    assert events[1][1] == str(dest) and events[2][1] == str(tmp_path)  # then the folder holding the name


def test_disk_full_while_writing_keeps_the_old_file_and_names_the_path(tmp_path, monkeypatch):
    dest = tmp_path / "verdict.json"
    dest.write_text("the old verdict")
    with pytest.raises(InputError) as e:
        with atomic_path(dest) as tmp:
            tmp.write_text("half")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert str(dest) in str(e.value) and "No space left" in str(e.value) and "\n" not in str(e.value)
    assert dest.read_text() == "the old verdict" and _leftovers(tmp_path) == []


def test_disk_full_for_real_on_a_small_tmpfs(tmp_path):
    """A genuinely full file system (root can mount a 64 KiB tmpfs): the old file survives, exit 2."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)],
                                           capture_output=True).returncode != 0:
        pytest.skip("needs root and mount to make a small file system; the injected ENOSPC test covers the logic")
    try:
        old = mnt / "old.bin"
        old.write_bytes(b"o" * 1000)
        with pytest.raises(InputError) as e:
            fileio.write_bytes_atomic(old, b"n" * 200_000)
        assert "No space left on device" in str(e.value) and str(old) in str(e.value)
        assert old.read_bytes() == b"o" * 1000 and _leftovers(mnt) == []
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


# ---- special files and links ---------------------------------------------------------------------

def test_a_fifo_is_written_into_not_replaced(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    write_text_atomic(fifo, "through the pipe")
    reader.join(timeout=10)
    assert got == [b"through the pipe"]
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)  # still a FIFO, not a regular file


def private_device(folder: Path, name: str, minor: int) -> Path:
    """A private node of the memory device (minor 3: null, 7: full), so that a regression replaces this
    node, never the machine's /dev/null (main's write-then-rename did exactly that, as root)."""
    node = folder / name
    try:
        os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(1, minor))
    except (PermissionError, OSError):
        pytest.skip("needs root (mknod) for a private character device")
    return node


def test_a_character_device_is_written_into_not_replaced(tmp_path):
    null = private_device(tmp_path, "null", 3)
    before = os.lstat(null)
    write_text_atomic(null, "discarded")
    after = os.lstat(null)
    assert stat.S_ISCHR(after.st_mode) and after.st_ino == before.st_ino and after.st_rdev == before.st_rdev
    link = tmp_path / "null-link"
    link.symlink_to(null)
    write_text_atomic(link, "discarded")
    assert link.is_symlink() and stat.S_ISCHR(os.lstat(null).st_mode)
    full = private_device(tmp_path, "full", 7)
    with pytest.raises(InputError, match="No space left"):  # a device that is always full
        write_text_atomic(full, "x")
    assert stat.S_ISCHR(os.lstat(full).st_mode)


def test_a_symlink_to_a_file_is_written_through_and_kept(tmp_path):
    target = tmp_path / "real.json"
    target.write_text("old")
    target.chmod(0o604)
    link = tmp_path / "link.json"
    link.symlink_to(target.name)
    write_text_atomic(link, "new")
    assert link.is_symlink() and os.readlink(link) == "real.json"
    assert target.read_text() == "new" and stat.S_IMODE(target.stat().st_mode) == 0o604
    dangling = tmp_path / "dangling.json"
    dangling.symlink_to(tmp_path / "nowhere" / "x.json")
    with pytest.raises(InputError, match="symlink to a missing file"):
        write_text_atomic(dangling, "x")
    assert not (tmp_path / "nowhere").exists()


def test_folders_paths_under_a_file_and_sockets_are_refused(tmp_path):
    (tmp_path / "sub").mkdir()
    with pytest.raises(InputError, match="is a folder"):
        write_text_atomic(tmp_path / "sub", "x")
    (tmp_path / "file").write_text("keep")
    with pytest.raises(InputError, match="file"):
        write_text_atomic(tmp_path / "file" / "out.json", "x")
    assert (tmp_path / "file").read_text() == "keep"
    import socket

    sock_path = tmp_path / "s.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(sock_path))
    try:
        with pytest.raises(InputError, match="socket"):
            write_text_atomic(sock_path, "x")
    finally:
        s.close()


def test_check_output_path_refuses_before_work(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match=r"--out .*file.* is a file, not a folder"):
        check_output_path(tmp_path / "file" / "deeper" / "out.json")
    with pytest.raises(InputError, match="is a folder"):
        check_output_path(tmp_path)
    check_output_path(tmp_path / "new" / "folder" / "out.json")  # a folder that can be made is fine
    check_output_path("-")


def test_read_only_file_system_is_refused(tmp_path):
    """chmod cannot stop root; a read-only mount does (os.access reports it), and so does a write."""
    mnt = tmp_path / "ro"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(mnt)],
                                           capture_output=True).returncode != 0:
        pytest.skip("needs root and mount for a read-only file system")
    try:
        with pytest.raises(InputError, match="not writable"):
            check_output_path(mnt / "out.json")
        with pytest.raises(InputError, match="Read-only file system"):
            write_text_atomic(mnt / "out.json", "x")
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_a_folder_without_write_permission_is_refused_for_a_user(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root writes into a chmod 0555 folder anyway; the read-only mount test covers root")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(InputError, match="not writable"):
            check_output_path(ro / "out.json")
    finally:
        ro.chmod(0o755)


# ---- inputs --------------------------------------------------------------------------------------

def test_an_output_naming_an_input_by_any_name_is_refused(tmp_path, monkeypatch):
    src = tmp_path / "in.safetensors"
    src.write_text("input")
    (tmp_path / "sub").mkdir()
    (tmp_path / "hard").hardlink_to(src)
    (tmp_path / "soft").symlink_to(src)
    monkeypatch.chdir(tmp_path / "sub")
    for other in (str(src), "../in.safetensors", "../sub/../in.safetensors", "../hard", "../soft"):
        with pytest.raises(InputError) as e:
            check_outputs({"--out": other}, {"--oracle": str(src)})
        assert other in str(e.value) and str(src) in str(e.value) and "\n" not in str(e.value)
    check_outputs({"--out": "../other"}, {"--oracle": str(src)})
    check_outputs({"--out": "-"}, {"--oracle": "-"})  # standard output is nobody's input
    with pytest.raises(InputError, match="also the output"):
        check_outputs({"--json": "../x", "--out": "../sub/../x"}, {})


def test_atomic_path_refuses_an_input_recorded_during_the_run(tmp_path):
    src = tmp_path / "cases.jsonl"
    src.write_text("keep me")
    link = tmp_path / "link"
    link.symlink_to(src)
    write_text_atomic(tmp_path / "free.txt", "outside a scope nothing is recorded")
    with input_scope():
        note_input(src)
        for name in (src, link):
            with pytest.raises(InputError, match="is an input of this run"):
                write_text_atomic(name, "overwritten")
        write_text_atomic(tmp_path / "other.txt", "fine")
    assert src.read_text() == "keep me"
    with input_scope():  # a file this run wrote (and re-read to validate it) it may write again
        from harness.trace import open_trace
        from tests.helpers import make_case
        from harness.trace import base_metadata, write_trace

        trace = tmp_path / "t.safetensors"
        for _ in range(2):
            write_trace(trace, base_metadata(runner="t", variant="bf16", vocab_size=32), [make_case("a")])
        open_trace(trace)
        with pytest.raises(InputError, match="is an input of this run"):
            write_trace(trace, base_metadata(runner="t", variant="bf16", vocab_size=32), [make_case("a")])
    write_text_atomic(src, "the scope is closed: a library caller may rewrite its file")
    assert src.read_text().startswith("the scope")


def test_input_files_that_cannot_be_read_are_named(tmp_path):
    with pytest.raises(InputError, match="--cases .*missing.jsonl: no such file"):
        check_input_file(tmp_path / "missing.jsonl", "--cases")
    with pytest.raises(InputError, match="is a folder"):
        check_input_file(tmp_path, "--cases")
    (tmp_path / "dangling").symlink_to(tmp_path / "gone")
    with pytest.raises(InputError, match="dangling symlink"):
        check_input_file(tmp_path / "dangling", "--cases")


def test_stdout_dash_writes_to_standard_output():
    code = ("from harness.fileio import write_text_atomic\n"
            "print('before', flush=True)\n"
            "write_text_atomic('-', 'the data\\n')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    assert out.stdout == "before\nthe data\n" and not Path("-").exists()
