"""Shared by test_app.py: the app as a child process behind a network guard, and pixel checks of screenshots.

`CLI_PRELUDE` starts `beit_flax.cli.main` (what the `beit-depth` script runs) after `guard_network`, which refuses and
logs every connection and name lookup that would leave this machine: the test then asserts the log is empty.
"""

from __future__ import annotations

import contextlib
import errno
import io
import ipaddress
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
from PIL import Image

NET_LOG_ENV = "BEIT_FLAX_TEST_NET_LOG"
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1", "0.0.0.0", "::", ""}
TESTS = Path(__file__).resolve().parent
# the console script's body, behind the guard
CLI_PRELUDE = (
    f"import sys; sys.path.insert(0, {str(TESTS)!r}); import app_helpers; app_helpers.guard_network(); "
    "from beit_flax.cli import main; sys.exit(main())"
)


def is_loopback(host: object) -> bool:
    if isinstance(host, bytes):
        host = host.decode()
    if host is None or host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
    except ValueError:
        return False


def guard_network(log: str | os.PathLike | None = None) -> None:
    """In this process: name lookups and TCP / UDP connections to anything but loopback fail, each noted in `log`
    (default $BEIT_FLAX_TEST_NET_LOG). Covers the standard library, httpx / urllib3 / requests and asyncio, which
    all resolve with socket.getaddrinfo and connect with socket.socket's methods."""
    import socket

    log = log or os.environ[NET_LOG_ENV]

    def note(what: str) -> None:
        with open(log, "a") as file:
            file.write(what + "\n")

    real_getaddrinfo = socket.getaddrinfo

    def getaddrinfo(host, *args, **kwargs):
        if not is_loopback(host):
            note(f"lookup {host!r}")
            raise socket.gaierror(socket.EAI_NONAME, f"{host}: name lookups are blocked by the test (offline)")
        return real_getaddrinfo(host, *args, **kwargs)

    def guarded(real):
        def connect(self, address, *args):
            if self.family in (socket.AF_INET, socket.AF_INET6) and not is_loopback(address[0]):
                note(f"connect {address!r}")
                raise OSError(errno.ENETUNREACH, f"{address}: connections are blocked by the test (offline)")
            return real(self, address, *args)

        return connect

    socket.getaddrinfo = getaddrinfo
    socket.socket.connect = guarded(socket.socket.connect)
    socket.socket.connect_ex = guarded(socket.socket.connect_ex)


class App:
    """`beit-depth app ARGS... --port 0` as a child process; `url` once it serves (its one line on stdout), which the
    constructor waits for unless `wait=False` (then `wait()` does: two apps load side by side)."""

    def __init__(self, args: list[str], env: dict[str, str], timeout: float = 180.0, wait: bool = True) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", CLI_PRELUDE, "app", *args, "--port", "0"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.readers = [
            threading.Thread(target=self._drain, args=(self.process.stdout, self.stdout, self.lines), daemon=True),
            threading.Thread(target=self._drain, args=(self.process.stderr, self.stderr, None), daemon=True),
        ]
        for reader in self.readers:
            reader.start()
        self.url = None
        self.timeout = timeout
        if wait:
            self.wait()

    def wait(self) -> App:
        """Wait until it serves (`url`); stop it and raise if it exits or takes longer than `timeout` s."""
        try:
            while self.url is None:
                line = self.lines.get(timeout=self.timeout)
                if line is None:
                    raise RuntimeError(f"the app exited ({self.process.wait()}) before serving:\n{self.log()}")
                if found := re.search(r"(http://\S+)", line):
                    self.url = found[1]
        except queue.Empty:
            self.stop()
            raise RuntimeError(f"the app did not serve within {self.timeout:.0f} s:\n{self.log()}") from None
        except BaseException:
            self.stop()
            raise
        return self

    @staticmethod
    def _drain(stream, lines: list[str], notify: queue.Queue | None) -> None:
        for line in stream:
            lines.append(line)
            if notify is not None:
                notify.put(line)
        if notify is not None:
            notify.put(None)

    def log(self) -> str:
        return "".join(self.stdout) + "".join(self.stderr)

    def stop(self, timeout: float = 20.0) -> int:
        """Ctrl-C (SIGINT), then SIGKILL if it has not exited after `timeout` s; the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for reader in self.readers:  # the last lines are in
            reader.join(5)
        return self.process.returncode


def peak_memory(pid: int) -> int:
    """A process's peak resident memory so far, in bytes (Linux: VmHWM)."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)[1]) * 1024


def files_under(folder: Path) -> dict[str, int]:
    """{path under `folder`: bytes} of every file there."""
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()}


def pattern_clip(path: Path, frames: int, size: str, fps: int) -> Path:
    """An H.264 clip of ffmpeg's test pattern (a real video, made in a second whatever its length)."""
    import imageio_ffmpeg

    source = f"testsrc=size={size}:rate={fps}"
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y", "-f", "lavfi", "-i", source]
    subprocess.run([*command, "-frames:v", str(frames), "-c:v", "libx264", "-pix_fmt", "yuv420p", path], check=True)
    return path


class SlowUpload:
    """An upload to the app that streams in slowly (as over a slow link): `total` bytes announced, 1 MiB sent every
    `pause` s from a thread, until `close()` or the server goes away."""

    def __init__(self, url: str, total: int, pause: float = 0.05) -> None:
        address = urlparse(url)
        self.socket = socket.create_connection((address.hostname, address.port))
        part = b'--B\r\nContent-Disposition: form-data; name="files"; filename="slow.mp4"\r\n\r\n'
        head = f"POST /gradio_api/upload HTTP/1.1\r\nHost: {address.netloc}\r\nContent-Length: {total}\r\n"
        self.socket.sendall(head.encode() + b"Content-Type: multipart/form-data; boundary=B\r\n\r\n" + part)
        self.left, self.pause, self.closed = total - len(part), pause, threading.Event()
        self.thread = threading.Thread(target=self._send, daemon=True)
        self.thread.start()

    def _send(self) -> None:
        chunk = bytes(2**20)
        with contextlib.suppress(OSError):
            while self.left > len(chunk) and not self.closed.wait(self.pause):
                self.socket.sendall(chunk)
                self.left -= len(chunk)

    def close(self) -> None:
        self.closed.set()
        self.thread.join(5)
        self.socket.close()


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def drawn_fraction(picture: np.ndarray) -> float:
    """The fraction of pixels unlike the picture's commonest colour (its background)."""
    colours, counts = np.unique(picture.reshape(-1, 3), axis=0, return_counts=True)
    return float(np.mean(np.abs(picture.astype(int) - colours[counts.argmax()].astype(int)).sum(-1) > 24))


def colourful_fraction(picture: np.ndarray) -> float:
    """The fraction of clearly coloured (not grey) pixels: Gradio's own labels, icons and borders are all grey, so
    a blank 3D view (its label over a white canvas) has none, and a drawn one the photo's colours."""
    return float(np.mean(np.ptp(picture.astype(int), axis=-1) > 40))


def save_small_png(png: bytes, path: Path, width: int | None = None) -> None:
    """A README screenshot: at most `width` px wide, 256 colours (a fifth of the bytes of a full-colour PNG)."""
    image = Image.open(io.BytesIO(png)).convert("RGB")
    if width and image.width > width:
        image = image.resize((width, round(image.height * width / image.width)), Image.LANCZOS)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.quantize(256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
