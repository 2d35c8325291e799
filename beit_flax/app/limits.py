"""The web demo's bounds, in one place: their defaults, their flags and the sentence the page states.

Every resource a visitor can drive has one. An upload's bytes: Gradio refuses a larger file in the browser before
sending it, and on the server while it streams in. An image's or a video frame's pixels: read from the header before
anything is decoded, the check and message of predict's --max-pixels with a smaller default (a request's memory
and files grow with the pixels: the .ply and .glb hold a point per pixel). A video's frames: a header announcing
more is refused before the first frame, and reading stops at the limit when the header does not say. The requests
waiting in the queue. The bytes of the results and uploads kept for open pages (`results.Results`).
"""

from __future__ import annotations

import argparse

from beit_flax.arguments import positive_int
from beit_flax.transforms import megapixels

MIB = 2**20
# 100 MB: any photo, a phone's minute of 1080p video
MAX_UPLOAD_MB = 100
# 12.6 MP: a 12 MP phone photo (4032x3024) passes, a 4000x4000 image does not. At the limit one image request peaks
# near 1.2 GB and writes ~270 MB of files (predict takes up to 67.1 MP: beit-depth predict for larger images)
MAX_PIXELS = 12 * 2**20
# 30 s at 30 fps: the model's worker is the one shared resource (beit-depth video for longer clips)
MAX_VIDEO_FRAMES = 900
MAX_WAITING = 32  # requests queued, all pages together; one more is refused with "queue full"
# the results and uploads kept for open pages, all together: past it the oldest go (a page's download links then
# fail); a single result larger than this is kept until it is replaced
KEPT_MB = 2048
# Gradio's cache check: every file older than an hour goes (uploads no request used, e.g. a video never run, and a
# page's results left open that long), checked every 10 minutes
GRADIO_CACHE_CHECK_S, GRADIO_CACHE_AGE_S = 600, 3600


def add_limit_options(parser: argparse.ArgumentParser) -> None:
    limits = parser.add_argument_group("limits (stated on the page)")
    limits.add_argument(
        "--max-upload-mb",
        type=positive_int,
        default=MAX_UPLOAD_MB,
        metavar="MB",
        help="largest upload, in MB of 2^20 bytes (default: %(default)s)",
    )
    limits.add_argument(
        "--max-pixels",
        type=positive_int,
        default=MAX_PIXELS,
        metavar="N",
        help="largest image or video frame, and network input, in pixels, read from the header "
        f"(default: %(default)s = {megapixels(MAX_PIXELS)}; predict's default is larger)",
    )
    limits.add_argument(
        "--max-video-frames",
        type=positive_int,
        default=MAX_VIDEO_FRAMES,
        metavar="N",
        help="longest video, in frames (default: %(default)s)",
    )


def limits_text(args: argparse.Namespace) -> str:
    """The limits as the page states them (one line of Markdown)."""
    return (
        f"Limits: uploads up to {args.max_upload_mb} MB; images and video frames up to "
        f"{megapixels(args.max_pixels)}; videos up to {args.max_video_frames} frames; {MAX_WAITING} requests "
        f"waiting. A page keeps its latest results until it closes (all pages: {KEPT_MB} MB, oldest dropped "
        "first); nothing is kept after the server stops."
    )
