"""File-system safety for every command: inputs are regular files read within a bound, outputs are complete files
that replace only a regular file that is not one of the inputs, and an interrupt leaves no temp file behind.

- `check_input` / `read_input`: a path we read must be a regular file (symlinks followed) of at most `max_bytes`;
  judged from `stat` before anything is opened (a FIFO would block, `/dev/zero` never ends), then again on the open
  descriptor.
- `check_outputs`: a path we write must be absent or a regular file (not a symlink, device, FIFO, socket or folder),
  none of the inputs (by file identity or resolved path: hard links, symlinks and `a/../a` all count), in an existing
  folder we may write. Commands call it before any work.
- `temp_beside` / `replace`: a temp file in the output's folder with a unique name, created exclusively (never
  through someone else's file or symlink) and removed on every exit path; `replace` renames it over the output
  after checking again that the output is still a regular file (or absent), and that no Ctrl-C / SIGTERM has
  arrived (`interrupts`). `atomic_write` is the two together.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path

from beit_flax import interrupts

# The largest weights file (float32 parameters plus msgpack framing) of any config within the families' bounds; a
# larger file is refused before it is read. BEiT's bounds (`models/dpt/config.py`) give the largest; test_config
# checks it. A checkpoint holds the parameters plus what releases carry beside them (classifier heads, buffers).
MAX_WEIGHTS_BYTES = 32 * 2**30
MAX_CHECKPOINT_BYTES = 2 * MAX_WEIGHTS_BYTES


class InputError(ValueError):
    """A path we were asked to read that is not a regular file within bounds; the message names it."""


class OutputError(OSError):
    """A path we will not write (see `check_outputs`); the message names it and the reason."""


class NoSpaceError(OSError):
    """An output its disk cannot hold (full, over a quota or a file size limit); the message names it, and nothing
    of it was left (`atomic_write`)."""


NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})  # full disk, quota, RLIMIT_FSIZE


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISCHR, "a device"),
        (stat.S_ISBLK, "a device"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def size_text(size: int) -> str:
    return f"{size / 2**30:.1f} GiB" if size >= 2**30 else f"{size / 2**20:.1f} MiB"


def check_input(path: str | os.PathLike, max_bytes: int | None = None, what: str = "file") -> Path:
    """`path` if it is a regular file (after symlinks) of at most `max_bytes`; InputError otherwise. Opens nothing."""
    path = Path(path)
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except OSError as err:
        raise InputError(f"{path}: cannot read ({err.strerror})") from None
    _check_input_stat(path, info, max_bytes, what)
    return path


def _check_input_stat(path: Path, info: os.stat_result, max_bytes: int | None, what: str) -> None:
    if not stat.S_ISREG(info.st_mode):
        raise InputError(f"{path}: {_kind(info.st_mode)}, not a regular file")
    if max_bytes is not None and info.st_size > max_bytes:
        raise InputError(
            f"{path}: {size_text(info.st_size)}, larger than any {what} can be ({size_text(max_bytes)} at most)"
        )


def read_input(path: str | os.PathLike, max_bytes: int, what: str = "file") -> bytes:
    """The bytes of `path`, a regular file of at most `max_bytes` (checked before opening and on the descriptor, so
    a swapped-in FIFO or device is refused too); InputError otherwise."""
    path = check_input(path, max_bytes, what)
    try:
        # O_NONBLOCK: should a FIFO appear here after the stat, opening it must not wait for a writer
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as err:
        raise InputError(f"{path}: cannot read ({err.strerror})") from None
    with os.fdopen(fd, "rb") as file:
        info = os.fstat(fd)
        _check_input_stat(path, info, max_bytes, what)
        data = file.read(info.st_size + 1)
    if len(data) != info.st_size:  # written to while we read it
        raise InputError(f"{path}: changed while being read")
    return data


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_dev, info.st_ino


def check_outputs(
    outputs: Iterable[str | os.PathLike], inputs: Iterable[str | os.PathLike] = (), *, make_folders: bool = False
) -> None:
    """Raise OutputError for the first of `outputs` that we may not write (see the module doc).

    make_folders: an output's folder may be missing if the command will make it (`mkdir(parents=True)`): then its
    nearest existing ancestor must be a folder we may write. O(outputs + inputs): inputs are indexed once by
    (device, inode) and by resolved path.
    """
    inputs = [Path(p) for p in inputs]
    by_identity = {key: p for p in inputs if (key := _identity(p)) is not None}
    by_path = {p.resolve(): p for p in inputs}
    folders: set[Path] = set()
    for output in map(Path, outputs):
        try:
            info = os.lstat(output)
        except (FileNotFoundError, NotADirectoryError):  # the folder check below says why
            info = None
        except OSError as err:
            raise OutputError(f"{output}: cannot check it ({err.strerror})") from None
        if info is not None and not stat.S_ISREG(info.st_mode):
            raise OutputError(f"{output}: {_kind(info.st_mode)}, not a regular file; it is never replaced")
        source = by_path.get(output.resolve()) or (by_identity.get((info.st_dev, info.st_ino)) if info else None)
        if source is not None:
            raise OutputError(f"{output}: is the input {source}; writing it would destroy the input")
        folder = output.resolve().parent
        if folder not in folders:
            _check_folder(output, folder, make_folders)
            folders.add(folder)


def _check_folder(output: Path, folder: Path, make_folders: bool) -> None:
    existing = folder
    while make_folders and not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        problem = f"{existing} is not a folder" if existing.exists() else f"folder {folder} does not exist"
        making = "" if existing == folder else f"cannot make {folder}: "
        raise OutputError(f"{output}: {making}{problem}")
    # effective ids: what the kernel checks when we write (a setuid or seteuid process included)
    if not os.access(existing, os.W_OK | os.X_OK, effective_ids=os.access in os.supports_effective_ids):
        raise OutputError(f"{output}: folder {existing} is not writable")


def _check_replaceable(path: Path) -> None:
    """The last check before a rename: the target is absent or a regular file (it may have changed since)."""
    with contextlib.suppress(FileNotFoundError):
        mode = os.lstat(path).st_mode
        if not stat.S_ISREG(mode):
            raise OutputError(f"{path}: {_kind(mode)}, not a regular file; it is never replaced")


@contextlib.contextmanager
def temp_beside(path: str | os.PathLike) -> Iterator[Path]:
    """A new empty temp file in `path`'s folder, `.<stem>.<random>.tmp<suffix>` (tools such as ffmpeg choose the
    format by the suffix), created exclusively; removed when the block exits unless `replace` moved it."""
    path = Path(path)
    _check_replaceable(path)
    temp = path.parent / f".{path.stem}.{secrets.token_hex(8)}.tmp{path.suffix}"
    # 0666 minus the umask (applied by the kernel), as open() would give, unlike mkstemp's 0600; O_EXCL with
    # O_NOFOLLOW: never an existing file or a planted symlink
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    os.close(os.open(temp, flags, 0o666))
    try:
        yield temp
    finally:
        temp.unlink(missing_ok=True)


def replace(temp: Path, path: str | os.PathLike) -> None:
    """Rename the complete file `temp` over `path`, which must still be absent or a regular file."""
    _check_replaceable(Path(path))
    interrupts.check()  # a Ctrl-C / SIGTERM swallowed where it landed (a GC callback) still stops the write
    os.replace(temp, path)


def atomic_write(path: str | os.PathLike, chunks: Iterable[bytes]) -> None:
    """Write `chunks` to a temp file beside `path`, fsync it and rename it over `path`: readers never see a partial
    file, an existing file is only replaced once the new one is complete, and a failure leaves no temp file."""
    with temp_beside(path) as temp:
        try:
            with open(temp, "wb") as file:
                for chunk in chunks:
                    file.write(chunk)
                file.flush()
                os.fsync(file.fileno())
        except OSError as err:
            if err.errno not in NO_SPACE_ERRNOS:
                raise
            reason = os.strerror(err.errno)
            raise NoSpaceError(f"{path}: cannot be written ({reason}); nothing of it was left") from None
        replace(temp, path)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    atomic_write(path, [data])


def first_line(err: BaseException) -> str:
    """An error's first line, for one-line messages (ffmpeg's, through imageio, come with its whole log)."""
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def join_problems(problems: list[str], shown: int = 10) -> str:
    """The first `shown` problems joined with "; ", and how many more there are: one readable error line."""
    more = f"; ... {len(problems) - shown} more" if len(problems) > shown else ""
    return "; ".join(problems[:shown]) + more
