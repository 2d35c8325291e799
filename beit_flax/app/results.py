"""The files each open page needs: its uploads and its results, kept while it shows them and removed after.

Everything the server writes lies under one folder, `root`: the results each request writes (a folder of its own,
`folder`), Gradio's uploads and the copies it serves (the app points $GRADIO_TEMP_DIR there, so that Gradio
serves a result from where it was written instead of copying it). A page's slot ("image-in", "image-out", ...)
holds what that part of the page shows now; `keep` replaces it, and what it held before is removed unless another
slot holds it too (two pages that uploaded the same bytes share Gradio's file). `end` empties a page's slots when
it closes. Past `max_bytes`, all pages together, the oldest slots go first. The server removes `root` when it stops.
"""

from __future__ import annotations

import collections
import contextlib
import shutil
import tempfile
import threading
from pathlib import Path


def size_of(path: Path) -> int:
    """Bytes of a file, or of the files under a folder; 0 for what is gone."""
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())
    return path.stat().st_size if path.is_file() else 0


class Results:
    """The slots of every page (see the module doc); thread-safe (the handlers run in Gradio's worker threads)."""

    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root, self.max_bytes = root.resolve(), max_bytes
        self.lock = threading.Lock()
        # (page, slot) -> (paths, bytes), the least recently kept first
        self.slots: collections.OrderedDict[tuple[str, str], tuple[list[Path], int]] = collections.OrderedDict()

    def folder(self, prefix: str) -> Path:
        """A new folder for one request's files."""
        return Path(tempfile.mkdtemp(prefix=f"{prefix}-", dir=self.root))

    def keep(self, page: str, slot: str, paths: list[str | Path]) -> None:
        """`paths` are what `slot` of `page` shows now (none: it shows nothing)."""
        paths = [Path(p).resolve() for p in paths]
        with self.lock:
            gone = [self.slots.pop((page, slot), ([], 0))[0]]
            if paths:
                self.slots[(page, slot)] = (paths, sum(size_of(p) for p in paths))
            total = sum(size for _, size in self.slots.values())
            while total > self.max_bytes and len(self.slots) > 1:  # the newest slot stays, even alone over it
                _, (old, size) = self.slots.popitem(last=False)
                gone.append(old)
                total -= size
            self._remove(gone)

    def end(self, page: str) -> None:
        """The page closed: everything its slots held goes."""
        with self.lock:
            self._remove([self.slots.pop(key)[0] for key in [key for key in self.slots if key[0] == page]])

    def bytes_kept(self) -> int:
        with self.lock:
            return sum(size for _, size in self.slots.values())

    def _remove(self, groups: list[list[Path]]) -> None:
        """Remove the paths no slot holds any more, and what only under `root` (never a visitor's own path)."""
        held = {p for paths, _ in self.slots.values() for p in paths}
        for path in {p for paths in groups for p in paths} - held:
            if path == self.root or not path.is_relative_to(self.root):
                continue
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
                if path.parent != self.root:  # Gradio's folder for the upload (named by its hash), once empty
                    with contextlib.suppress(OSError):
                        path.parent.rmdir()
