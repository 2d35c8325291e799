"""The converted-weights cache: one beit-flax .msgpack per (source, digest), a JSON record beside it, and lock files.

    $BEIT_FLAX_WEIGHTS_DIR, else ~/.cache/beit-flax/weights ($XDG_CACHE_HOME respected)
        <slug>-<digest[:16]>.msgpack   the converted weights (beit_flax.save: written atomically)
        <slug>-<digest[:16]>.json      {"name", "source", "sha256", "checkpoint", "created"}; written after the
                                       .msgpack, so a record always names a complete file
        downloads/<release file>       verified release downloads (and .<file>.part.pt while one is in progress)
        .locks/<key>.lock              fcntl locks: one process at a time downloads and converts a given source

(BEIT_FLAX_CACHE_DIR keeps its meaning: the JAX compile cache.) Hub downloads stay in the Hugging Face cache.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

from beit_flax.files import atomic_write_bytes, read_input

WEIGHTS_ENV = "BEIT_FLAX_WEIGHTS_DIR"
MAX_RECORD_BYTES = 1 << 16
# Every record this cache writes says so; a folder may also hold a user's own model.msgpack + model.json, which
# `list` and `clear` must never take for an entry
WRITER = "beit-flax weights cache"


def weights_dir(path: str | os.PathLike | None = None) -> Path:
    """`path`, else $BEIT_FLAX_WEIGHTS_DIR, else ~/.cache/beit-flax/weights ($XDG_CACHE_HOME respected)."""
    if path is None and os.environ.get(WEIGHTS_ENV):
        path = os.environ[WEIGHTS_ENV]
    if path is None:
        path = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "beit-flax" / "weights"
    return Path(path).expanduser()


def artifacts_dir(folder: Path) -> Path:
    """Where `predict --runtime onnxruntime|openvino` keeps its ONNX exports (`runtimes.artifact`): `onnx/`."""
    return folder / "onnx"


def artifacts(folder: Path) -> list[Path]:
    """The ONNX exports kept in the cache `folder`, by name."""
    found = artifacts_dir(folder)
    if not found.is_dir():
        return []
    return sorted(p for p in found.glob("*.onnx") if p.is_file() and not p.is_symlink())


@dataclasses.dataclass(frozen=True)
class Entry:
    """One converted model in the cache: `weights` the .msgpack, `record` its JSON, `info` the JSON's content."""

    weights: Path
    record: Path
    info: dict

    @property
    def size(self) -> int:
        return self.weights.stat().st_size


def _slug(name: str) -> str:
    return re.sub(r"[^\w.-]+", "_", name).strip("._")[-60:] or "weights"


def _ours(weights: Path, info: dict) -> bool:
    """A record this cache wrote: it carries `WRITER`, or (written before the marker) its file is named by
    `target`, ending in the first 16 hex digits of the sha256 it records."""
    if info.get("writer") == WRITER:
        return True
    digest = info.get("sha256")
    return isinstance(digest, str) and len(digest) == 64 and weights.stem.endswith("-" + digest[:16])


def entries(folder: Path) -> list[Entry]:
    """Every complete entry (a readable record whose .msgpack exists), oldest first."""
    found = []
    for record in sorted(folder.glob("*.json")) if folder.is_dir() else ():
        weights = record.with_suffix(".msgpack")
        try:
            # a regular file under the cap, read as such: a FIFO or a link to /dev/zero named *.json is skipped
            info = json.loads(read_input(record, MAX_RECORD_BYTES, "cache record"))
        except (OSError, ValueError):  # InputError is a ValueError
            continue  # not ours, or unreadable: never trusted
        if isinstance(info, dict) and _ours(weights, info) and weights.is_file() and not weights.is_symlink():
            found.append(Entry(weights, record, info))
    return sorted(found, key=lambda e: str(e.info.get("created", "")))


def find(folder: Path, *, source: str | None = None, sha256: str | None = None, **match) -> Entry | None:
    """The newest entry whose record has this source and/or digest (and every `match` field), or None."""
    for entry in reversed(entries(folder)):
        info = entry.info
        if (
            (source is None or info.get("source") == source)
            and (sha256 is None or info.get("sha256") == sha256)
            and all(info.get(k) == v for k, v in match.items())
        ):
            return entry
    return None


def target(folder: Path, name: str, sha256: str) -> Path:
    """Where the .msgpack converted from a checkpoint with this digest goes."""
    return folder / f"{_slug(name)}-{sha256[:16]}.msgpack"


def record(weights: Path, **info) -> Entry:
    """Write the JSON record of the complete file `weights` (atomically); returns the entry."""
    info = {**info, "writer": WRITER, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    path = weights.with_suffix(".json")
    atomic_write_bytes(path, (json.dumps(info, indent=1) + "\n").encode())
    return Entry(weights, path, info)


@contextlib.contextmanager
def locked(folder: Path, key: str) -> Iterator[None]:
    """Hold an exclusive lock for `key` (a source): a second process resolving it waits here, then finds the entry
    the first one wrote. The lock goes with the process, however it ends; no fcntl (Windows): no locking."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    locks = folder / ".locks"
    locks.mkdir(parents=True, exist_ok=True)
    name = hashlib.sha256(key.encode()).hexdigest()[:24]
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(locks / f"{name}.lock", flags, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def remove(paths: list[Path]) -> int:
    """Delete `paths` (files only; missing ones are skipped); returns the bytes freed."""
    freed = 0
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            if path.is_symlink() or not path.is_file():
                continue  # we only ever made regular files here
            size = path.stat().st_size
            path.unlink()
            freed += size
    return freed
