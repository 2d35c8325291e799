"""The page and its request handlers: an Image tab and a Video tab over one model.

Two queues, one model: image requests and video requests queue apart (one of each at a time), so that an image
goes through while a video runs, and take turns on the model step by step (`TakingTurns`): an image waits for at
most one video step. Each new image runs the model once (its `upload` event: `change` fires twice when an image
replaces another). Every file a request writes is in a folder of its own, kept while the page shows it
(`results.Results`); a video request stops at its next frame when the server stops.
"""

from __future__ import annotations

import argparse
import collections
import secrets
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gradio as gr

from beit_flax.app.limits import GRADIO_CACHE_AGE_S, GRADIO_CACHE_CHECK_S, MAX_WAITING, limits_text
from beit_flax.app.results import Results
from beit_flax.arguments import one_line

IMAGE_HEIGHT, VIEW_HEIGHT = 360, 420  # px: a photo and its depth side by side, the 3D view a little taller


class FairLock:
    """A lock granted in the order it was asked for. A `threading.Lock` goes to whichever thread runs first: the one
    that just released it, so a video taking it again for each frame kept an image waiting for seconds."""

    def __init__(self) -> None:
        self.changed = threading.Condition()
        self.waiting: collections.deque[object] = collections.deque()
        self.held = False

    def __enter__(self) -> None:
        ticket = object()
        with self.changed:
            self.waiting.append(ticket)
            self.changed.wait_for(lambda: not self.held and self.waiting[0] is ticket)
            self.waiting.popleft()
            self.held = True

    def __exit__(self, *exc: object) -> None:
        with self.changed:
            self.held = False
            self.changed.notify_all()


class TakingTurns:
    """A `Predictor` shared by threads: each device step (an image, or a video's next frame or batch) holds the
    lock, so that the batcher never runs two at once and an image waits for at most one step of a running video."""

    def __init__(self, predictor: Any) -> None:
        self.inner, self.lock = predictor, FairLock()

    def __getattr__(self, name: str) -> Any:  # output, max_pixels, inputs, finish...: the predictor's own
        return getattr(self.inner, name)

    def depth(self, image: Any) -> Any:
        with self.lock:
            return self.inner.depth(image)

    def run(self, prepared: Any, on_error: Any = None) -> Iterator[Any]:
        results = self.inner.run(prepared, on_error)
        while True:
            with self.lock:
                item = next(results, None)
            if item is None:
                return
            yield item


def page_of(request: gr.Request | None) -> str:
    """The page a request came from (API calls without one: a slot of their own, dropped by age or bytes)."""
    return getattr(request, "session_hash", None) or secrets.token_hex(8)


def refused(message: str) -> gr.Error:
    """A visitor's input refused: the message on their page, nothing on the server's stderr (Gradio would print a
    traceback for each)."""
    return gr.Error(one_line(message), print_exception=False)


def shown_name(err: Exception, path: str, name: str) -> gr.Error:
    """`refused` with the error's message, the upload's server path replaced by the file's own name."""
    return refused(str(err).replace(str(path), name))


class Demo:
    """The request handlers around one `Predictor`; `results` keeps what each page shows."""

    def __init__(self, predictor: Any, args: argparse.Namespace, results: Results) -> None:
        self.predictor, self.args, self.results = TakingTurns(predictor), args, results
        self.stopping = threading.Event()  # set when the server stops: a running video ends at its next frame

    def image(self, upload: dict | None, page: str) -> tuple[str | None, str | None, list[str] | None, str]:
        """A new image (Gradio's upload record) -> (depth PNG, GLB, [the files], a status line). Gradio passes the
        upload's own file unread (no preprocessing): `read_image` is the one decoder, and checks the pixels from the
        header first."""
        from beit_flax.geometry import camera_focal
        from beit_flax.images import ImageError, read_image
        from beit_flax.outputs import image_files

        if not upload:  # cleared
            self.results.keep(page, "image-in", [])
            self.results.keep(page, "image-out", [])
            return None, None, None, ""
        path = upload["path"]  # in Gradio's upload folder (checked), named as uploaded (sanitised by Gradio)
        name = Path(path).name
        self.results.keep(page, "image-in", [path])
        start = time.perf_counter()
        try:
            # decoded as predict does: same pixels, and its EXIF focal length
            rgb = read_image(path, self.predictor.max_pixels)
            height, width = rgb.shape[:2]
            focal_px, focal_from = camera_focal(path, width, self.args.fov)
            depth = self.predictor.depth(rgb)
        except (ImageError, ValueError) as err:  # unreadable, too large, a network input over the pixel limit
            raise shown_name(err, path, name) from None
        files = image_files(
            depth,
            rgb,
            output=self.predictor.output,
            colormap=self.args.colormap,
            ply=True,
            glb=True,
            focal_px=focal_px,
        )
        stem = Path(name).stem
        folder = self.results.folder("image")
        try:
            written = {suffix: folder / f"{stem}{suffix}" for suffix in files}
            for suffix in list(files):
                written[suffix].write_bytes(files.pop(suffix))
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        self.results.keep(page, "image-out", [folder])
        seconds = time.perf_counter() - start
        status = f"{name}: {width}x{height}, focal {focal_px:.0f} px ({focal_from}), {seconds:.1f} s"
        return str(written[".png"]), str(written[".glb"]), [str(p) for p in written.values()], status

    def video(
        self, path: str | None, stabilize: bool, side_by_side: bool, page: str, progress: Any = None
    ) -> tuple[str, str, str]:
        """An uploaded video -> (the depth video, the same file to download, a status line); `progress` (a
        gr.Progress) follows the frames. Refused before its first frame when its header announces more frames than
        the limit; stopped at the limit when the header does not say."""
        from beit_flax.video import VideoError, announced_frames, depth_video, read_header

        if path is None:
            raise refused("upload a video first")
        name, limit = Path(path).name, self.args.max_video_frames
        self.results.keep(page, "video-in", [path])
        try:
            meta = read_header(path, self.predictor.max_pixels)
        except VideoError as err:  # unreadable, or frames over the pixel limit
            raise shown_name(err, path, name) from None
        announced = announced_frames(meta)  # None: the header does not say; reading stops at the limit then
        if announced is not None and announced > limit:
            raise refused(
                f"{name}: {announced} frames is over the limit of {limit} frames (raise it with "
                "--max-video-frames; beit-depth video takes any length)"
            )
        folder = self.results.folder("video")
        out = folder / f"{Path(name).stem}_depth.mp4"
        frames = {"done": 0, "total": None}

        def on_start(total: int | None) -> None:
            frames["total"] = total

        def on_frame() -> None:
            if self.stopping.is_set():
                raise VideoError("the server is stopping")
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
                max_frames=limit,
                colormap=self.args.colormap,
                on_start=on_start,
                on_frame=on_frame,
            )
        except BaseException as err:
            shutil.rmtree(folder, ignore_errors=True)
            if isinstance(err, ValueError):  # VideoError: unreadable video, frames over the limit, a failed encode
                raise shown_name(err, path, name) from None
            raise
        self.results.keep(page, "video-out", [folder])
        status = f"{name}: {result.frames} frames at {result.fps:g} fps in {result.seconds:.1f} s"
        if result.frames >= limit:
            status += f" (stopped at the limit of {limit} frames)"
        return str(out), str(out), status


def build(demo: Demo, title: str) -> gr.Blocks:
    """The page: the model and the limits, an Image tab and a Video tab."""
    predictor = demo.predictor
    colours = predictor.output.range_text() or "colours min-max per image, near bright"
    scale = f"{predictor.family.title}: {predictor.output.units}; {colours}"
    # Gradio's cache: what no request took (an upload never run) goes by age, and everything when the server stops
    cache = (GRADIO_CACHE_CHECK_S, GRADIO_CACHE_AGE_S)
    with gr.Blocks(title=title, analytics_enabled=False, delete_cache=cache) as blocks:
        gr.Markdown(f"## {title}\n{scale}.\n\n{limits_text(demo.args)}", elem_id="about")
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
            image_outputs = [depth_out, mesh_out, files_out, image_status]

            def image(upload: dict | None, request: gr.Request):
                return demo.image(upload, page_of(request))

            def cleared(request: gr.Request):
                return demo.image(None, page_of(request))

            # preprocess=False: the upload record itself (Gradio would open the file with Pillow first)
            image_in.upload(image, image_in, image_outputs, preprocess=False, concurrency_id="image")
            image_in.clear(cleared, None, image_outputs, queue=False)
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

            def video(path: str | None, stabilize: bool, side_by_side: bool, request: gr.Request, progress=frames_bar):
                return demo.video(path, stabilize, side_by_side, page_of(request), progress)

            inputs, outputs = [video_in, stabilize, side_by_side], [video_out, video_file, video_status]
            run.click(video, inputs, outputs, concurrency_id="video")

        def closed(request: gr.Request) -> None:
            demo.results.end(page_of(request))

        blocks.unload(closed)
    # one image and one video at a time (concurrency_id: a queue each), MAX_WAITING waiting in all
    return blocks.queue(default_concurrency_limit=1, max_size=MAX_WAITING)
