"""What `beit-depth predict` writes for one image, as bytes: the CLI and the web demo write exactly these.

- `.npy`: float32 (H, W) at the image's size: relative inverse depth (MiDaS; larger = nearer) or meters (ZoeDepth).
- `.png`: the map colormapped (MiDaS: min-max per image, as MiDaS run.py; ZoeDepth: the fixed range 0..top_m
  meters, near bright, stated in the PNG's text), or 16-bit grayscale.
- `.ply`: a binary point cloud, one RGB point per pixel; `.glb`: a textured mesh (`beit_flax.geometry`: pinhole camera,
  glTF axes; meters for ZoeDepth, the stated normalised scale for MiDaS).
"""

from __future__ import annotations

import numpy as np

from beit_flax import geometry  # trimesh itself loads only when a 3D file is made
from beit_flax.images import colorize, colorize_metric, encode_npy, encode_png, to_png16

SUFFIXES = (".npy", ".png", ".ply", ".glb")  # the order the CLI lists and writes them


def suffixes(*, png: bool = True, ply: bool = False, glb: bool = False) -> list[str]:
    """The files `image_files` makes with these options, in `SUFFIXES` order (the CLI checks them before any work)."""
    asked = {".npy": True, ".png": png, ".ply": ply, ".glb": glb}
    return [suffix for suffix in SUFFIXES if asked[suffix]]


def png_text(top_m: float | None) -> dict[str, str] | None:
    """The PNG's tEXt chunks: ZoeDepth's range and direction (a MiDaS PNG is min-max: nothing to state)."""
    return None if top_m is None else {"depth": "metric, meters", "depth_range_m": f"0 {top_m:g}", "near": "bright"}


def picture(depth: np.ndarray, top_m: float | None, colormap: str = "inferno") -> np.ndarray:
    """(H, W) depth -> (H, W, 3) uint8: MiDaS' min-max per map, or (top_m set) ZoeDepth's fixed 0..top_m meters."""
    return colorize(depth, colormap) if top_m is None else colorize_metric(depth, top_m, colormap)


def metric_png16(depth_m: np.ndarray, top_m: float) -> np.ndarray:
    """(H, W) meters -> uint16 over the fixed range: 65535 at 0 m, 0 at top_m and beyond (near = bright)."""
    return (65535 * (1.0 - np.clip(np.nan_to_num(depth_m, nan=top_m) / top_m, 0.0, 1.0))).astype(np.uint16)


def image_files(
    depth: np.ndarray,
    rgb: np.ndarray,
    *,
    top_m: float | None = None,
    colormap: str = "inferno",
    grayscale16: bool = False,
    png: bool = True,
    ply: bool = False,
    glb: bool = False,
    focal_px: float | None = None,
) -> dict[str, bytes]:
    """One image's files {suffix: bytes} (see the module doc), in `SUFFIXES` order.

    depth: (H, W) float32 from `Predictor.depth`; rgb: the (H, W, 3) image it came from (uint8; 16-bit images are
    scaled to 8 bits for the point colours and the texture); top_m: the ZoeDepth colour range (None: MiDaS);
    focal_px: the pinhole focal length in pixels, needed for `ply` / `glb` (`geometry.camera_focal`).
    """
    files = {".npy": encode_npy(depth)}
    if png:
        if grayscale16:
            gray = to_png16(depth) if top_m is None else metric_png16(depth, top_m)
            files[".png"] = encode_png(gray, png_text(top_m))
        else:
            files[".png"] = encode_png(picture(depth, top_m, colormap), png_text(top_m))
    if ply or glb:
        if focal_px is None:
            raise ValueError("a focal length is needed for .ply / .glb files")
        colours = rgb if rgb.dtype == np.uint8 else (rgb // 257).astype(np.uint8)
        metric = top_m is not None
        if ply:
            files[".ply"] = geometry.ply_bytes(depth, colours, metric=metric, focal_px=focal_px)
        if glb:
            files[".glb"] = geometry.glb_bytes(depth, colours, metric=metric, focal_px=focal_px)
    return files
