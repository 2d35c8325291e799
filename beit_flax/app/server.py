"""`beit-depth app`'s command line and its server's life: flags, the model loaded once, serving, and clean-up.

Everything the server writes (results, and Gradio's uploads and cache: $GRADIO_TEMP_DIR points there while it runs)
lies in one new folder under $GRADIO_TEMP_DIR or the system's temp folder, removed on every exit: Ctrl-C, SIGTERM
and SIGHUP stop it like Ctrl-C (a second signal cannot cut the clean-up short), a running video stops at its next
frame, open connections get `SHUTDOWN_S` to finish, and the folder is removed, once then and once more when the
process exits (after every other thread has stopped). SIGKILL leaves it behind: nothing runs then.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import functools
import logging
import os
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from beit_flax.app.limits import KEPT_MB, MIB, add_limit_options
from beit_flax.arguments import EXIT_USAGE, PROG, fov_arg, net_size_arg, one_line
from beit_flax.interrupts import interruptible

INSTALL_HINT = 'the app needs gradio: pip install "beit-flax[app]"'
WARM_UP_HW = (480, 640)  # the warm-up image: compiles the network input of 4:3 landscape photos, the commonest shape
SHUTDOWN_S = 2  # what open connections (an upload streaming in, a page waiting for a result) get to finish
# system fonts only: Gradio's theme fonts would be fetched (web fonts), which an offline page cannot
SANS = ["ui-sans-serif", "system-ui", "-apple-system", "Segoe UI", "Roboto", "Helvetica", "Arial", "sans-serif"]
MONO = ["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "Liberation Mono", "monospace"]


def port_arg(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port in 0..65535 (0: a free one), got {value}")
    return value


def add_app_parser(sub: argparse._SubParsersAction) -> None:
    from beit_flax.images import COLORMAPS
    from beit_flax.models.precision import COMPUTE_DTYPES

    parser = sub.add_parser(
        "app",
        help="a local web demo: images -> depth, 3D view and files; videos -> depth videos",
        description="Serves a web page (Gradio, installed with beit-flax[app]): drop an image to see its depth, "
        "a 3D view of its mesh and download predict's .npy / .png / .ply / .glb; or upload a video for its depth "
        "video. The model is loaded and compiled once, at start. Nothing is fetched from the internet.",
    )
    parser.add_argument("--weights", required=True, metavar="W", help="as predict's --weights")
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (default: %(default)s, this machine)")
    parser.add_argument("--port", type=port_arg, default=7860, help="port (default: %(default)s; 0: a free one)")
    parser.add_argument("--size", type=net_size_arg, metavar="N", help="net size (default: the model's)")
    parser.add_argument("--dtype", choices=COMPUTE_DTYPES, default="float32", help="compute dtype (default: float32)")
    parser.add_argument("--colormap", choices=COLORMAPS, default="inferno", help="colormap (default: %(default)s)")
    parser.add_argument(
        "--fov",
        type=fov_arg,
        metavar="DEG",
        help="horizontal field of view of the 3D files (default: from EXIF, else 60 degrees)",
    )
    add_limit_options(parser)


def probe_port(host: str, port: int) -> int:
    """Bind host:port and let go: the port to serve on (port 0: one the OS finds free), or OSError saying why not
    (in use, not this machine's address, an unknown host). Gradio builds its URL from the number it is given, and
    reports any failure to bind as a port in use."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: a port in TIME_WAIT is free
        probe.bind(address)
        return probe.getsockname()[1]


@contextlib.contextmanager
def server_folder() -> Iterator[Path]:
    """A new folder for everything the server writes, $GRADIO_TEMP_DIR while the block runs (Gradio reads it when
    it is imported), removed when the block ends and again at exit, after every other thread has stopped (a request
    thread may still have written in between)."""
    previous = os.environ.get("GRADIO_TEMP_DIR")
    parent = Path(previous or tempfile.gettempdir())
    parent.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="beit-depth-app-", dir=parent))
    remove = functools.partial(shutil.rmtree, root, ignore_errors=True)
    atexit.register(remove)
    os.environ["GRADIO_TEMP_DIR"] = str(root)
    try:
        yield root
    finally:
        if previous is None:
            os.environ.pop("GRADIO_TEMP_DIR", None)
        else:
            os.environ["GRADIO_TEMP_DIR"] = previous
        remove()


def run_app(args: argparse.Namespace) -> int:
    """Load, warm up, serve until Ctrl-C / SIGTERM / SIGHUP: 128 + the signal then; 2 after reporting missing gradio,
    bad weights, a --size over --max-pixels or a port that cannot be served."""
    report = lambda message: print(f"{PROG}: {one_line(message)}", file=sys.stderr)
    # before gradio is imported: its import and Blocks() read these (analytics, PyPI version check, hub telemetry)
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"

    def run() -> int:
        with server_folder() as root:  # removed on every exit: the clean-up runs with the signals ignored
            return serve(args, root, report)

    return interruptible(PROG, run, line="stopped ({signal})")


def serve(args: argparse.Namespace, root: Path, report: Callable[[str], None]) -> int:
    """`run_app` inside its signal handling and its folder `root`."""
    try:
        import gradio as gr
    except ImportError:
        report(f"error: {INSTALL_HINT}")
        return EXIT_USAGE
    import numpy as np

    from beit_flax.app.page import Demo, build
    from beit_flax.app.results import Results
    from beit_flax.images import set_pixel_limit
    from beit_flax.predictor import Predictor

    try:  # before the model loads (minutes, for a large one): a bad --host or --port is known at once
        port = probe_port(args.host, args.port)
    except OSError as err:  # socket.gaierror too
        report(f"error: cannot serve on {args.host}:{args.port}: {err.strerror or err}")
        return EXIT_USAGE
    try:
        set_pixel_limit(args.max_pixels)  # Pillow's guard agrees with read_image's limit, as in predict
        predictor = Predictor(args.weights, size=args.size, dtype=args.dtype, max_pixels=args.max_pixels)
        # compiles now, not on the first request (a mid-grey picture: any content compiles the same program)
        predictor.depth(np.full((*WARM_UP_HW, 3), 128, np.uint8))
    except (OSError, ValueError) as err:
        report(f"error: {err}")
        return EXIT_USAGE
    demo = Demo(predictor, args, Results(root, KEPT_MB * MIB))
    blocks = build(demo, f"beit-depth: {Path(str(args.weights)).name}")
    try:
        try:
            _, url, _ = blocks.launch(
                server_name=args.host,
                server_port=port,
                share=False,
                prevent_thread_lock=True,
                quiet=True,
                theme=gr.themes.Default(font=SANS, font_mono=MONO),
                ssr_mode=False,
                pwa=False,
                mcp_server=False,
                enable_monitoring=False,
                footer_links=[],
                show_error=True,
                max_file_size=args.max_upload_mb * MIB,
            )
        except OSError:  # Gradio's "Cannot find empty port": taken since the probe
            report(f"error: cannot serve on {args.host}:{port}: the port is in use (--port 0 takes a free one)")
            return EXIT_USAGE
        # uvicorn otherwise waits for every open connection (an upload streaming in) before its shutdown, longer
        # than Gradio's close() waits for it
        if (server := getattr(blocks, "server", None)) is not None:
            server.config.timeout_graceful_shutdown = SHUTDOWN_S
        print(f"{PROG}: serving {args.weights} on {url} (Ctrl-C to stop)", flush=True)
        while True:
            time.sleep(3600)
    finally:
        demo.stopping.set()
        # the connections cut at SHUTDOWN_S would each log a traceback: stopping is the one line run_app prints
        logging.getLogger("uvicorn.error").disabled = True
        with contextlib.suppress(Exception):
            blocks.close(verbose=False)
