"""File-system safety for everything beit-flax writes: complete files or nothing, never through a link.

`atomic_write` writes a temp file beside the target (created exclusively, so never through someone else's file or
symlink), fsyncs it and renames it over the target: readers never see a partial file, and an existing file is only
replaced once the new one is complete.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterable
from pathlib import Path


def atomic_write(path: str | os.PathLike, chunks: Iterable[bytes]) -> None:
    """Write `chunks` to `path` atomically (see the module doc); the temp file is removed on any failure."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    # created like open() would (0666 minus the umask, applied by the kernel), unlike mkstemp's 0600; O_EXCL: never
    # write through someone else's file or link
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    atomic_write(path, [data])
