"""For test_hub.py: a release-file server on 127.0.0.1 (complete, cut short, slow, Range resume, 404) and a
Hugging Face hub cache laid out as huggingface_hub reads it, built from a perturbed transformers checkpoint."""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path


class ReleaseServer(http.server.ThreadingHTTPServer):
    """Serves `files` {url path: bytes}; `mode`: "ok", "cut" (stops half way, the full length announced), "slow"
    (the file in 10 pieces over ~`slow_s`), "huge" (announces 100 GiB), "endless" (no length, the file over and
    over until the client hangs up), "loop" (redirects to itself). Honours `Range: bytes=N-` with 206. `log`:
    (path, Range header)."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files: dict[str, bytes] = {}
        self.mode = "ok"
        self.slow_s = 3.0
        self.log: list[tuple[str, str | None]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def gets(self, path: str) -> int:
        return sum(p == path for p, _ in self.log)


class _Handler(http.server.BaseHTTPRequestHandler):
    server: ReleaseServer

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        server, rng = self.server, self.headers.get("Range")
        server.log.append((self.path, rng))
        data = server.files.get(self.path)
        if data is None:
            self.send_error(404, "Not Found")
            return
        if server.mode == "loop":
            self.send_response(302)
            self.send_header("Location", self.path)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        start = int(rng.removeprefix("bytes=").split("-")[0]) if rng else 0
        body = data[start:]
        self.send_response(206 if rng else 200)
        if server.mode == "endless":
            self.end_headers()
            with contextlib.suppress(OSError):  # the client hangs up: that is the end
                while True:
                    self.wfile.write(body or b"x")
            self.close_connection = True
            return
        self.send_header("Content-Length", str(100 * 2**30 if server.mode == "huge" else len(body)))
        if rng:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        if server.mode in ("cut", "huge"):
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        pieces = 10 if server.mode == "slow" else 1
        step = -(-len(body) // pieces)
        for i in range(0, len(body), step):
            self.wfile.write(body[i : i + step])
            self.wfile.flush()
            if server.mode == "slow":
                time.sleep(server.slow_s / pieces)


@contextlib.contextmanager
def release_server() -> Iterator[ReleaseServer]:
    server = ReleaseServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def hub_cache(root: Path, repo: str, folder: Path, commit: str = "a" * 40, ref: str | None = "main") -> Path:
    """Put the files of `folder` into `root` as huggingface_hub's cache holds a download of `repo` at `commit`:
    blobs named by their sha256 (the LFS etag the hub publishes), snapshot symlinks, refs/<ref>. Returns the
    snapshot folder."""
    base = root / f"models--{repo.replace('/', '--')}"
    snapshot = base / "snapshots" / commit
    (base / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    for file in sorted(folder.iterdir()):
        digest = hashlib.sha256(file.read_bytes()).hexdigest()
        shutil.copyfile(file, base / "blobs" / digest)
        (snapshot / file.name).unlink(missing_ok=True)
        (snapshot / file.name).symlink_to(Path("..", "..", "blobs", digest))
    if ref is not None:
        (base / "refs").mkdir(exist_ok=True)
        (base / "refs" / ref).write_text(commit)
    return snapshot
