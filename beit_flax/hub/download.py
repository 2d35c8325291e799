"""A plain HTTPS download with resume, a progress bar and a sha256, for release files (GitHub releases).

`download(url, part, max_bytes=...)` appends to the partial file `part` (a Range request resumes an interrupted
download), hashes the whole file and returns its sha256. It never writes the final name: the caller verifies the
file (published sha256, then the converter's tensor accounting) and renames it. Deleted rather than kept for a
resume: a partial whose digest is wrong, one past `max_bytes` (announced or sent), one the disk has no room for.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import shutil
import stat
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from beit_flax.files import NO_SPACE_ERRNOS, size_text

CHUNK = 1 << 20
TIMEOUT_S = 60.0  # per socket operation, not for the whole file


class DownloadError(OSError):
    """A download that failed (HTTP error, no network, cut short); the message is one line naming the URL."""


class NoNetworkError(DownloadError):
    """The server could not be reached at all (offline, DNS, refused)."""


class DigestError(DownloadError):
    """The file's sha256 is not the published one; the file was deleted."""


class TooLargeError(DownloadError):
    """The server announced or sent more than the download's bound; the partial file was deleted."""


class NoSpaceError(DownloadError):
    """The disk cannot hold the file (announced size over the free space, or a write failed for space); the partial
    file was deleted."""


def _refuse(part: Path, error: DownloadError) -> DownloadError:
    part.unlink(missing_ok=True)
    return error


@contextlib.contextmanager
def _space_checked(url: str, part: Path) -> Iterator[None]:
    """A write to `part` that fails for space becomes a NoSpaceError naming the folder, the partial file deleted:
    it cannot be completed there, and a resume would only fail again."""
    try:
        yield
    except OSError as err:
        if err.errno not in NO_SPACE_ERRNOS:
            raise
        raise _refuse(
            part,
            NoSpaceError(
                f"{url}: no space left in {part.parent} ({os.strerror(err.errno)}); removed the partial download, "
                f"free some space and run again"
            ),
        ) from None


def sha256_file(path: Path, digest=None) -> str:
    """The hex sha256 of `path` (continuing `digest` if given)."""
    digest = digest or hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _open_part(part: Path) -> int:
    """The partial file for appending, created if absent; never through a symlink or into a non-regular file."""
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(part, flags, 0o666)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise DownloadError(f"{part}: not a regular file; remove it")
    return fd


def _request(url: str, offset: int):
    headers = {"User-Agent": "beit-flax", **({"Range": f"bytes={offset}-"} if offset else {})}
    try:
        return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT_S)
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:  # the partial file is already complete
            return None
        reason = " ".join(str(err.reason).split())  # urllib's redirect-loop reason spans three lines
        raise DownloadError(f"{url}: HTTP {err.code} {reason}") from None
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise NoNetworkError(f"{url}: cannot connect ({reason})") from None


def download(url: str, part: Path, *, max_bytes: int, sha256: str | None = None, progress: bool = True) -> str:
    """Download `url` into `part` (resuming what is there) and return the file's sha256.

    max_bytes: the most the file may hold (a known release's bound, else the checkpoint bound): a larger announced
    length is refused before anything is written, and a body that goes past it (no length announced) is cut there.
    Raises DownloadError (cut short: the partial file is kept for the next run to resume), NoNetworkError, and with
    `part` deleted: DigestError (`sha256` given and not matched), TooLargeError, NoSpaceError (the folder is named).
    """
    from tqdm import tqdm

    fd = _open_part(part)
    with os.fdopen(fd, "r+b", buffering=0) as file:  # unbuffered: a failed write leaves nothing to flush at close
        offset = os.fstat(fd).st_size
        try:
            response = _request(url, offset)
        except DownloadError:
            if offset == 0:  # nothing to resume: no empty partial left behind
                part.unlink(missing_ok=True)
            raise
        digest = hashlib.sha256()
        if response is not None and response.status != 206:  # the server ignored Range: start over
            file.truncate(0)
            offset = 0
        if offset:
            sha256_file(part, digest)
        file.seek(offset)
        if response is not None:
            with response:
                length = response.headers.get("Content-Length")
                total = offset + int(length) if length and length.isdigit() else None
                if total is not None and total > max_bytes:
                    raise _refuse(
                        part,
                        TooLargeError(f"{url}: {size_text(total)}, over this file's bound ({size_text(max_bytes)})"),
                    )
                free = shutil.disk_usage(part.parent).free
                if total is not None and total - offset > free:
                    raise _refuse(
                        part,
                        NoSpaceError(
                            f"{url}: {size_text(total - offset)} to download, {size_text(free)} free in "
                            f"{part.parent}; free some space and run again"
                        ),
                    )
                bar = tqdm(
                    total=total,
                    initial=offset,
                    unit="B",
                    unit_scale=True,
                    unit_divisor=1024,
                    desc=url.rsplit("/", 1)[-1],
                    file=sys.stderr,
                    disable=None if progress else True,
                )
                with bar:
                    while True:
                        try:
                            chunk = response.read(CHUNK)
                        except (http.client.HTTPException, OSError) as err:
                            raise DownloadError(
                                f"{url}: download interrupted after {file.tell()} bytes "
                                f"({type(err).__name__}); run again to resume"
                            ) from None
                        if not chunk:
                            break
                        if file.tell() + len(chunk) > max_bytes:
                            raise _refuse(
                                part, TooLargeError(f"{url}: sent more than this file's bound ({size_text(max_bytes)})")
                            )
                        with _space_checked(url, part):
                            view = memoryview(chunk)
                            while view:  # a raw write may take part of the chunk
                                view = view[file.write(view) :]
                        digest.update(chunk)
                        bar.update(len(chunk))
                if total is not None and file.tell() != total:
                    raise DownloadError(
                        f"{url}: download interrupted after {file.tell()} of {total} bytes; run again to resume"
                    )
        with _space_checked(url, part):
            os.fsync(file.fileno())
    got = digest.hexdigest()
    if sha256 is not None and got != sha256.lower():
        part.unlink(missing_ok=True)
        raise DigestError(f"{url}: sha256 {got} does not match the published {sha256}; the download was deleted")
    return got
