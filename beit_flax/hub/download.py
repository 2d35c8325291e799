"""A plain HTTPS download with resume, a progress bar and a sha256, for release files (GitHub releases).

`download(url, part)` appends to the partial file `part` (a Range request resumes an interrupted download), hashes
the whole file and returns its sha256. It never writes the final name: the caller verifies the file (published
sha256, then the converter's tensor accounting) and renames it. A digest mismatch deletes `part`.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import stat
import sys
import urllib.error
import urllib.request
from pathlib import Path

CHUNK = 1 << 20
TIMEOUT_S = 60.0  # per socket operation, not for the whole file


class DownloadError(OSError):
    """A download that failed (HTTP error, no network, cut short); the message is one line naming the URL."""


class NoNetworkError(DownloadError):
    """The server could not be reached at all (offline, DNS, refused)."""


class DigestError(DownloadError):
    """The file's sha256 is not the published one; the file was deleted."""


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
        raise DownloadError(f"{url}: HTTP {err.code} {err.reason}") from None
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise NoNetworkError(f"{url}: cannot connect ({reason})") from None


def download(url: str, part: Path, *, sha256: str | None = None, progress: bool = True) -> str:
    """Download `url` into `part` (resuming what is there) and return the file's sha256.

    Raises DownloadError (the partial file is kept for the next run to resume), NoNetworkError, or DigestError
    (`part` deleted) when `sha256` is given and does not match.
    """
    from tqdm import tqdm

    fd = _open_part(part)
    with os.fdopen(fd, "r+b") as file:
        offset = os.fstat(fd).st_size
        response = _request(url, offset)
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
                    try:
                        while chunk := response.read(CHUNK):
                            file.write(chunk)
                            digest.update(chunk)
                            bar.update(len(chunk))
                    except (http.client.HTTPException, OSError) as err:
                        raise DownloadError(
                            f"{url}: download interrupted after {file.tell()} bytes "
                            f"({type(err).__name__}); run again to resume"
                        ) from None
                if total is not None and file.tell() != total:
                    raise DownloadError(
                        f"{url}: download interrupted after {file.tell()} of {total} bytes; run again to resume"
                    )
        file.flush()
        os.fsync(file.fileno())
    got = digest.hexdigest()
    if sha256 is not None and got != sha256.lower():
        part.unlink(missing_ok=True)
        raise DigestError(f"{url}: sha256 {got} does not match the published {sha256}; the download was deleted")
    return got
