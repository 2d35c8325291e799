"""`beit-depth app`: a local web demo (Gradio) of one depth model, loaded and compiled once at start.

    beit-depth app --weights W [--host 127.0.0.1] [--port 7860] [--size N] [--dtype D] [--colormap C] [--fov DEG]
                   [--max-upload-mb MB] [--max-pixels N] [--max-video-frames N]

- Image tab: upload or drop an image -> its colormapped depth, an interactive 3D view of the textured mesh (the
  .glb), and the files `beit-depth predict --ply --glb` writes for it, byte for byte (`outputs.image_files`):
  <stem>.npy, <stem>.png, <stem>.ply, <stem>.glb.
- Video tab: upload a video -> its (temporally stabilised) depth video, <stem>_depth.mp4 (`video.depth_video`).

--weights takes what predict's does (`hub.resolve`); --size / --dtype / --colormap / --fov mean what they mean there
(--fov: the horizontal field of view of the 3D files, default the EXIF focal length, else 60 degrees).
--host defaults to loopback: nothing outside this machine reaches the demo unless asked (--host 0.0.0.0);
--port 0 takes a free port. One line gives the URL once it serves; Ctrl-C stops it (exit 130), SIGTERM too (143).

Bounded (`limits`: the page states them): uploads, pixels, video frames, requests waiting, and the files kept for
open pages (`results`); image and video requests queue apart and take turns on the model (`page`); everything the
server wrote is removed when it stops (`server`).

Offline by design: no share link, no analytics or version check, no server-side rendering (Node), and a theme of
system fonts (Gradio's themes otherwise name web fonts), so neither the server nor the page fetches anything from
the internet. Gradio is an optional extra: pip install "beit-flax[app]".
"""

from beit_flax.app.server import add_app_parser, run_app

__all__ = ["add_app_parser", "run_app"]
