"""beit_flax.files: inputs are regular files within a bound, outputs replace only regular files that are no input,
temp files are exclusive, unique and removed on every exit path, and SIGTERM / Ctrl-C end a command cleanly.

The hostile nodes (a device, a FIFO, a socket, a folder, a symlink) are made in tmp_path; as root (the worst case:
permissions stop nothing), a FIFO opened by mistake would block, so every read of one runs under `fifo_watchdog`.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import threading
from pathlib import Path

import pytest

from beit_flax import files
from beit_flax.files import InputError, OutputError, atomic_write_bytes, check_input, check_outputs, read_input

KINDS = ("device", "fifo", "socket", "folder", "symlink")


def make_node(path: Path, kind: str, target: Path | None = None) -> Path:
    """A non-regular file at `path`: a /dev/null-like character device (root only), a FIFO, a bound socket, a
    folder, or a symlink to `target` (a regular file)."""
    if kind == "device":
        if os.geteuid() != 0:
            pytest.skip("device nodes need root")
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "socket":
        with socket.socket(socket.AF_UNIX) as sock:
            sock.bind(str(path))  # the node stays after the socket closes
    elif kind == "folder":
        path.mkdir()
    else:
        target = target or path.with_name(path.name + ".target")
        if not target.exists():
            target.write_bytes(b"the symlink's target")
        path.symlink_to(target)
    return path


def snapshot(root: Path) -> dict[str, tuple]:
    """Every entry under `root`, not following links: kind and content (bytes, link target, device number; for a
    file over 64 MiB its size, mtime and inode)."""
    found = {}
    for folder, dirs, names in os.walk(root):
        for name in dirs + names:
            path = Path(folder) / name
            info = os.lstat(path)
            if stat.S_ISREG(info.st_mode) and info.st_size > 2**26:  # the sparse giants: any write changes mtime
                found[str(path.relative_to(root))] = ("file", info.st_size, info.st_mtime_ns, info.st_ino)
            elif stat.S_ISREG(info.st_mode):
                found[str(path.relative_to(root))] = ("file", path.read_bytes())
            elif stat.S_ISLNK(info.st_mode):
                found[str(path.relative_to(root))] = ("link", os.readlink(path))
            else:
                found[str(path.relative_to(root))] = (stat.S_IFMT(info.st_mode), info.st_rdev)
    return found


@contextlib.contextmanager
def fifo_watchdog(fifo: Path, seconds: float = 20.0):
    """Should code under test open `fifo` for reading (it must not), give it EOF after `seconds` instead of hanging."""

    def release() -> None:
        with contextlib.suppress(OSError):
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # succeeds only if a reader is waiting

    timer = threading.Timer(seconds, release)
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


@pytest.mark.parametrize("kind", ["device", "fifo", "socket", "folder"])
def test_inputs_must_be_regular_files(tmp_path, kind):
    node = make_node(tmp_path / "input", kind)
    with fifo_watchdog(node), pytest.raises(InputError) as info:
        read_input(node, 1000)
    assert str(node) in str(info.value) and "not a regular file" in str(info.value)
    with pytest.raises(InputError):
        check_input(node)


def test_inputs_larger_than_the_bound_are_refused_unread(tmp_path):
    big = tmp_path / "big.bin"
    with open(big, "wb") as file:
        file.truncate(2**40)  # sparse: a terabyte that takes no disk
    with pytest.raises(InputError, match=r"1024.0 GiB, larger than any weights file can be \(1.0 MiB at most\)"):
        read_input(big, 2**20, "weights file")
    (tmp_path / "small.bin").write_bytes(b"12345")
    assert read_input(tmp_path / "small.bin", 5) == b"12345"
    with pytest.raises(InputError, match="no such file"):
        read_input(tmp_path / "missing.bin", 5)


@pytest.mark.parametrize("kind", KINDS)
def test_non_regular_outputs_are_never_replaced(tmp_path, kind):
    """check_outputs refuses, and atomic_write (the last line of defence) refuses too: the node is unchanged and no
    temp file is left."""
    node = make_node(tmp_path / "out.bin", kind)
    before = snapshot(tmp_path)
    with pytest.raises(OutputError, match="not a regular file; it is never replaced"):
        check_outputs([node])
    with pytest.raises(OutputError):
        atomic_write_bytes(node, b"new")
    assert snapshot(tmp_path) == before


def test_an_output_that_is_an_input_is_refused(tmp_path):
    """By resolved path (also when neither exists yet), through `..` and symlinked folders, and by file identity
    (a hard link)."""
    (tmp_path / "sub").mkdir()
    source = tmp_path / "a.pt"
    source.write_bytes(b"input")
    os.link(source, tmp_path / "hard.pt")
    (tmp_path / "alias").symlink_to(tmp_path)
    for output in (source, tmp_path / "sub" / ".." / "a.pt", tmp_path / "alias" / "a.pt", tmp_path / "hard.pt"):
        with pytest.raises(OutputError, match=f"is the input {source}; writing it would destroy the input"):
            check_outputs([tmp_path / "other.bin", output], [tmp_path / "x.jpg", source])
    check_outputs([tmp_path / "b.pt", tmp_path / "sub" / "a.pt"], [source])  # different files: fine
    assert source.read_bytes() == b"input"


def test_output_folder_must_exist(tmp_path):
    """(Writable: as an unprivileged user, in test_safety.py.)"""
    with pytest.raises(OutputError, match="does not exist"):
        check_outputs([tmp_path / "missing" / "out.bin"])
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(OutputError, match="file is not a folder"):
        check_outputs([tmp_path / "file" / "out.bin"])
    with pytest.raises(OutputError, match=r"cannot make .*/file/a: .*/file is not a folder"):
        check_outputs([tmp_path / "file" / "a" / "out.bin"], make_folders=True)
    check_outputs([tmp_path / "new" / "er" / "out.bin"], make_folders=True)  # made later by the command
    assert not (tmp_path / "new").exists()


def test_temp_files_are_exclusive_unique_and_removed(tmp_path, monkeypatch):
    """A symlink planted at the temp name is never followed; two temps for one output differ; the temp goes on an
    exception and on Ctrl-C; `replace` moves it over the output."""
    victim = tmp_path / "victim"
    victim.write_bytes(b"untouched")
    with files.temp_beside(tmp_path / "o.mp4") as first, files.temp_beside(tmp_path / "o.mp4") as second:
        assert first != second and first.suffix == ".mp4" and first.parent == tmp_path
        assert first.name.startswith(".o.") and first.stat().st_size == 0
    monkeypatch.setattr(files.secrets, "token_hex", lambda n: "predictable")
    (tmp_path / ".o.predictable.tmp.mp4").symlink_to(victim)
    with pytest.raises(FileExistsError), files.temp_beside(tmp_path / "o.mp4"):
        pass
    (tmp_path / ".o.predictable.tmp.mp4").unlink()
    for error in (RuntimeError, KeyboardInterrupt):
        with pytest.raises(error), files.temp_beside(tmp_path / "o.mp4") as temp:
            temp.write_bytes(b"partial")
            raise error
    with files.temp_beside(tmp_path / "o.mp4") as temp:
        temp.write_bytes(b"complete")
        files.replace(temp, tmp_path / "o.mp4")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.mp4", "victim"]
    assert victim.read_bytes() == b"untouched" and (tmp_path / "o.mp4").read_bytes() == b"complete"
