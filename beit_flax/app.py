"""`beit-depth app`: a local web demo (Gradio) of one depth model, loaded and compiled once at start.

    beit-depth app --weights W [--host 127.0.0.1] [--port 7860] [--size N] [--dtype D] [--colormap C] [--fov DEG]

- Image tab: upload or drop an image -> its colormapped depth, an interactive 3D view of the textured mesh (the
  .glb), and the files `beit-depth predict --ply --glb` writes for it, byte for byte (`outputs.image_files`):
  <stem>.npy, <stem>.png, <stem>.ply, <stem>.glb.
- Video tab: upload a video -> its (temporally stabilised) depth video, <stem>_depth.mp4 (`video.depth_video`).

--weights takes what predict's does (`hub.resolve`); --size / --dtype / --colormap / --fov mean what they mean there
(--fov: the horizontal field of view of the 3D files, default the EXIF focal length, else 60 degrees).
--host defaults to loopback: nothing outside this machine reaches the demo unless asked (--host 0.0.0.0);
--port 0 takes a free port. One line gives the URL once it serves; Ctrl-C stops it (exit 130).

Offline by design: no share link, no analytics or version check, no server-side rendering (Node), and a theme of
system fonts (Gradio's themes otherwise name web fonts), so neither the server nor the page fetches anything from
the internet. Gradio is an optional extra: pip install "beit-flax[app]".
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from beit_flax.arguments import EXIT_USAGE, PROG, fov_arg, net_size_arg, one_line

INSTALL_HINT = 'the app needs gradio: pip install "beit-flax[app]"'
WARM_UP_HW = (480, 640)  # the warm-up image: compiles the network input of 4:3 landscape photos, the commonest shape
IMAGE_HEIGHT, VIEW_HEIGHT = 360, 420  # px: a photo and its depth side by side, the 3D view a little taller
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


def probe_port(host: str, port: int) -> int:
    """Bind host:port and let go: the port to serve on (port 0: one the OS finds free), or OSError saying why not
    (in use, not this machine's address, an unknown host). Gradio builds its URL from the number it is given, and
    reports any failure to bind as a port in use."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: a port in TIME_WAIT is free
        probe.bind(address)
        return probe.getsockname()[1]


class Demo:
    """The request handlers around one `Predictor`; each request writes into its own folder under `root`."""

    def __init__(self, predictor: Any, args: argparse.Namespace, root: Path) -> None:
        self.predictor, self.args, self.root = predictor, args, root

    def folder(self, stem: str) -> Path:
        return Path(tempfile.mkdtemp(prefix=f"{stem}-", dir=self.root))

    def image(self, path: str | None) -> tuple[str | None, str | None, list[str] | None, str]:
        """An uploaded image file -> (depth PNG, GLB, [the files], a status line)."""
        import gradio as gr

        from beit_flax.geometry import camera_focal
        from beit_flax.images import ImageError, read_image
        from beit_flax.outputs import image_files

        if path is None:  # the image was cleared
            return None, None, None, ""
        start = time.perf_counter()
        try:
            # the upload's own file (type="filepath", image_mode=None: never re-encoded), decoded as predict does:
            # same pixels, and its EXIF focal length
            rgb = read_image(path, self.predictor.max_pixels)
            height, width = rgb.shape[:2]
            focal_px, focal_from = camera_focal(path, width, self.args.fov)
            depth = self.predictor.depth(rgb)
        except (ImageError, ValueError) as err:  # unreadable, too large, a network input over the pixel limit
            raise gr.Error(str(err).replace(str(path), Path(path).name)) from None
        files = image_files(
            depth,
            rgb,
            output=self.predictor.output,
            colormap=self.args.colormap,
            ply=True,
            glb=True,
            focal_px=focal_px,
        )
        stem = Path(path).stem
        folder = self.folder(stem)
        written = {suffix: folder / f"{stem}{suffix}" for suffix in files}
        for suffix, data in files.items():
            written[suffix].write_bytes(data)
        status = (
            f"{Path(path).name}: {width}x{height}, focal {focal_px:.0f} px ({focal_from}), "
            f"{time.perf_counter() - start:.1f} s"
        )
        return str(written[".png"]), str(written[".glb"]), [str(p) for p in written.values()], status

    def video(
        self, path: str | None, stabilize: bool, side_by_side: bool, progress: Any = None
    ) -> tuple[str, str, str]:
        """An uploaded video -> (the depth video, the same file to download, a status line); `progress` (a
        gr.Progress) follows the frames."""
        import gradio as gr

        from beit_flax.video import depth_video

        if path is None:
            raise gr.Error("upload a video first")
        stem = Path(path).stem
        out = self.folder(stem) / f"{stem}_depth.mp4"
        frames = {"done": 0, "total": None}

        def on_start(total: int | None) -> None:
            frames["total"] = total

        def on_frame() -> None:
            frames["done"] += 1
            if progress is not None and frames["total"]:
                progress((frames["done"], frames["total"]), unit="frames")

        try:
            result = depth_video(
                self.predictor,
                path,
                out,
                stabilize=stabilize,
                side_by_side=side_by_side,
                colormap=self.args.colormap,
                on_start=on_start,
                on_frame=on_frame,
            )
        except ValueError as err:  # VideoError: unreadable video, frames over the pixel limit, a failed encode
            raise gr.Error(str(err).replace(str(path), Path(path).name)) from None
        status = f"{Path(path).name}: {result.frames} frames at {result.fps:g} fps in {result.seconds:.1f} s"
        return str(out), str(out), status


def build(demo: Demo, title: str) -> Any:
    """The page: an Image tab and a Video tab."""
    import gradio as gr

    predictor = demo.predictor
    colours = predictor.output.range_text() or "colours min-max per image, near bright"
    scale = f"{predictor.family.title}: {predictor.output.units}; {colours}"
    # delete_cache: Gradio's copies of uploads and results older than a day go, checked hourly (and all on close)
    with gr.Blocks(title=title, analytics_enabled=False, delete_cache=(3600, 86400)) as blocks:
        gr.Markdown(f"## {title}\n{scale}.")
        # one model: the image and video handlers take turns on it (one queue, one worker)
        model_queue = {"concurrency_limit": 1, "concurrency_id": "model"}
        with gr.Tab("Image"):
            with gr.Row():
                image_in = gr.Image(
                    type="filepath",
                    image_mode=None,
                    sources=["upload", "clipboard"],
                    label="Image",
                    height=IMAGE_HEIGHT,
                    elem_id="image-in",
                )
                depth_out = gr.Image(
                    type="filepath", label="Depth", interactive=False, height=IMAGE_HEIGHT, elem_id="depth-out"
                )
            with gr.Row():
                mesh_out = gr.Model3D(
                    label="3D (the .glb): drag to turn, scroll to zoom", height=VIEW_HEIGHT, elem_id="mesh-out"
                )
                with gr.Column():
                    files_out = gr.File(file_count="multiple", label="Files", interactive=False, elem_id="files-out")
                    image_status = gr.Markdown(elem_id="image-status")
            image_in.change(demo.image, image_in, [depth_out, mesh_out, files_out, image_status], **model_queue)
        with gr.Tab("Video"):
            with gr.Row():
                with gr.Column():
                    video_in = gr.Video(sources=["upload"], label="Video", elem_id="video-in")
                    stabilize = gr.Checkbox(value=True, label="Stabilise (steady colours from frame to frame)")
                    side_by_side = gr.Checkbox(value=False, label="Input beside depth")
                    run = gr.Button("Depth video", variant="primary", elem_id="video-run")
                with gr.Column():
                    video_out = gr.Video(label="Depth video", interactive=False, elem_id="video-out")
                    video_file = gr.File(label="File", interactive=False, elem_id="video-file")
                    video_status = gr.Markdown(elem_id="video-status")

            frames_bar = gr.Progress()  # Gradio finds a handler's progress bar as a parameter's default

            def video(path: str | None, stabilize: bool, side_by_side: bool, progress=frames_bar):
                return demo.video(path, stabilize, side_by_side, progress)

            run.click(video, [video_in, stabilize, side_by_side], [video_out, video_file, video_status], **model_queue)
    return blocks


@contextlib.contextmanager
def stop_on_sigterm():
    """SIGTERM raises like Ctrl-C while serving (the server and temp files are then closed by `finally`)."""
    from beit_flax.files import Terminated

    def stop(signum: int, frame: object) -> None:
        raise Terminated

    main_thread = threading.current_thread() is threading.main_thread()  # where handlers can be set
    previous = signal.signal(signal.SIGTERM, stop) if main_thread else None
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def run_app(args: argparse.Namespace) -> int:
    """Load, warm up, serve until Ctrl-C / SIGTERM: 128 + the signal then; 2 after reporting missing gradio, bad
    weights or a port that cannot be served."""
    report = lambda message: print(f"{PROG}: {one_line(message)}", file=sys.stderr)
    # before gradio is imported: its import and Blocks() read these (analytics, PyPI version check, hub telemetry)
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    try:
        import gradio as gr
    except ImportError:
        report(f"error: {INSTALL_HINT}")
        return EXIT_USAGE
    root = None
    blocks = None
    try:
        with stop_on_sigterm():
            import numpy as np

            from beit_flax.images import DEFAULT_MAX_PIXELS, set_pixel_limit
            from beit_flax.predictor import Predictor

            try:  # before the model loads (minutes, for a large one): a bad --host or --port is known at once
                port = probe_port(args.host, args.port)
            except OSError as err:  # socket.gaierror too
                report(f"error: cannot serve on {args.host}:{args.port}: {err.strerror or err}")
                return EXIT_USAGE
            try:
                set_pixel_limit(DEFAULT_MAX_PIXELS)  # Pillow's guard agrees with read_image's limit, as in predict
                predictor = Predictor(args.weights, size=args.size, dtype=args.dtype)
                # compiles now, not on the first request (a mid-grey picture: any content compiles the same program)
                predictor.depth(np.full((*WARM_UP_HW, 3), 128, np.uint8))
            except (OSError, ValueError) as err:
                report(f"error: {err}")
                return EXIT_USAGE
            root = Path(tempfile.mkdtemp(prefix="beit-depth-app-"))
            blocks = build(Demo(predictor, args, root), f"beit-depth: {Path(str(args.weights)).name}")
            theme = gr.themes.Default(font=SANS, font_mono=MONO)
            try:
                _, url, _ = blocks.launch(
                    server_name=args.host,
                    server_port=port,
                    share=False,
                    prevent_thread_lock=True,
                    quiet=True,
                    theme=theme,
                    ssr_mode=False,
                    pwa=False,
                    mcp_server=False,
                    enable_monitoring=False,
                    footer_links=[],
                    show_error=True,
                )
            except OSError:  # Gradio's "Cannot find empty port": taken since the probe
                report(f"error: cannot serve on {args.host}:{port}: the port is in use (--port 0 takes a free one)")
                return EXIT_USAGE
            print(f"{PROG}: serving {args.weights} on {url} (Ctrl-C to stop)", flush=True)
            while True:
                time.sleep(3600)
    except KeyboardInterrupt as err:
        signum = getattr(err, "signum", signal.SIGINT)
        report(f"stopped ({signal.Signals(signum).name})")
        return 128 + signum
    finally:
        if blocks is not None:
            with contextlib.suppress(Exception):
                blocks.close(verbose=False)
        if root is not None:
            shutil.rmtree(root, ignore_errors=True)
