"""`beit-depth cache list|clear [NAME...]`: see and free the converted-weights cache (`cache.weights_dir()`).

list: one line per converted model (name, size, digest, source, file), per release download and per ONNX export
(`predict --runtime onnxruntime|openvino`). clear: every entry and export, or only the entries whose name, source or
file is given, with their release downloads (exports, keyed by weights digest and size, go with a full clear; at
most `runtimes.KEPT_ARTIFACTS` are kept anyway); the Hugging Face cache (hub downloads) is huggingface_hub's to
manage (`hf cache ...`).
"""

from __future__ import annotations

import sys
from pathlib import Path

from beit_flax.arguments import EXIT_CANNOT_WRITE, one_line
from beit_flax.hub import cache
from beit_flax.hub.sources import KNOWN


def _size(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def _downloads(folder: Path) -> list[Path]:
    downloads = folder / "downloads"
    return sorted(p for p in downloads.iterdir() if p.is_file()) if downloads.is_dir() else []


def list_lines(folder: Path) -> list[str]:
    """The `cache list` lines: converted models, then release downloads, then the total."""
    lines, total = [f"weights cache: {folder}"], 0
    for entry in cache.entries(folder):
        size, info = entry.size, entry.info
        total += size
        lines.append(
            f"{info.get('name', '?')}  {_size(size)}  sha256 {str(info.get('sha256', '?'))[:12]}  "
            f"from {info.get('source', '?')}  {entry.weights}"
        )
    for path in _downloads(folder):
        size = path.stat().st_size
        total += size
        state = "partial download" if path.name.startswith(".") else "download"
        lines.append(f"{state}  {_size(size)}  {path}")
    for path in cache.artifacts(folder):
        size = path.stat().st_size
        total += size
        lines.append(f"onnx export  {_size(size)}  {path}")
    lines.append(f"total {_size(total)}" if len(lines) > 1 else "empty")
    return lines


def clear(folder: Path, names: list[str]) -> str:
    """Remove every entry (no `names`) or those matching a name, source or file; returns the summary line."""
    chosen = [
        e
        for e in cache.entries(folder)
        if not names
        or any(n in (e.info.get("name"), e.info.get("source"), str(e.weights), e.weights.name) for n in names)
    ]
    files = [p for e in chosen for p in (e.weights, e.record)]
    if names:
        release = {KNOWN[n].filename for n in names if n in KNOWN}
        files += [
            p
            for p in _downloads(folder)
            if p.name in release or p.name.startswith(tuple(f".{Path(r).stem}.part" for r in release))
        ]
    else:
        files += _downloads(folder)
    exports = [] if names else cache.artifacts(folder)
    freed = cache.remove(files + exports)
    downloads = len(files) - 2 * len(chosen)
    also = f", {len(exports)} ONNX export{'s' * (len(exports) != 1)}" if exports else ""
    return (
        f"removed {len(chosen)} converted model{'s' * (len(chosen) != 1)}{also} and "
        f"{downloads} download{'s' * (downloads != 1)} from {folder}: "
        f"{_size(freed)} freed (hub downloads stay in the Hugging Face cache: `hf cache`)"
    )


def main(action: str, names: list[str]) -> int:
    """`beit-depth cache ACTION [NAME...]`; prints to stdout, returns the exit status: 0, or 3 after one line on
    stderr when the cache cannot be read or written (a read-only file system, permissions)."""
    folder = cache.weights_dir()
    try:
        print("\n".join(list_lines(folder)) if action == "list" else clear(folder, names))
    except OSError as err:
        where = err.filename or folder
        print(
            f"beit-depth: error: cannot {action} the weights cache: {one_line(where)}: {err.strerror or err}",
            file=sys.stderr,
        )
        return EXIT_CANNOT_WRITE
    return 0
