"""What `beit-depth predict` writes for one image, as bytes: the CLI and the web demo write exactly these.

- `.npy`: float32 (H, W) at the image's size, in the model's units (`DepthOutput.units`: relative inverse depth,
  larger = nearer; or meters).
- `.pfm`: the same values as MiDaS run.py writes them (`utils.write_pfm`): a grayscale Portable Float Map, header
  `Pf\n{W} {H}\n-1.000000\n` (a negative scale: little-endian), float32 rows from the bottom one up.
- `.png`: the map colormapped over the model's colour range (`DepthOutput.unit`: min-max per image as MiDaS run.py,
  or a fixed range in meters, near bright, stated in the PNG's text), or 16-bit grayscale.
- `.ply`: a binary point cloud, one RGB point per pixel; `.glb`: a textured mesh (`beit_flax.geometry`: pinhole camera,
  glTF axes; z from `DepthOutput.z`: meters, or a stated normalised scale for relative depth).
"""

from __future__ import annotations

import numpy as np

from beit_flax import geometry  # trimesh itself loads only when a 3D file is made
from beit_flax.images import colorize_unit, encode_npy, encode_png
from beit_flax.models.depth_output import RELATIVE, DepthOutput

SUFFIXES = (".npy", ".pfm", ".png", ".ply", ".glb")  # the order the CLI lists and writes them


def suffixes(*, pfm: bool = False, png: bool = True, ply: bool = False, glb: bool = False) -> list[str]:
    """The files `image_files` makes with these options, in `SUFFIXES` order (the CLI checks them before any work)."""
    asked = {".npy": True, ".pfm": pfm, ".png": png, ".ply": ply, ".glb": glb}
    return [suffix for suffix in SUFFIXES if asked[suffix]]


def encode_pfm(depth: np.ndarray) -> bytes:
    """(H, W) depth -> a grayscale PFM file, byte for byte what MiDaS `utils.write_pfm(path, depth.astype(float32))`
    writes on a little-endian machine: "Pf", "W H", the scale 1 as "%f" made negative (little-endian samples), then
    the float32 rows bottom to top (`np.flipud`). Values are written as they are (the .npy's)."""
    if depth.ndim != 2:
        raise ValueError(f"a PFM depth map is (H, W), got shape {depth.shape}")
    height, width = depth.shape
    header = b"Pf\n%d %d\n%f\n" % (width, height, -1.0)
    return header + np.ascontiguousarray(np.flipud(depth), dtype="<f4").tobytes()


def picture(depth: np.ndarray, output: DepthOutput, colormap: str = "inferno") -> np.ndarray:
    """(H, W) depth -> (H, W, 3) uint8 over the model's colour range (`DepthOutput.unit`), near bright."""
    return colorize_unit(output.unit(depth), colormap)


def image_files(
    depth: np.ndarray,
    rgb: np.ndarray,
    *,
    output: DepthOutput = RELATIVE,
    colormap: str = "inferno",
    grayscale16: bool = False,
    pfm: bool = False,
    png: bool = True,
    ply: bool = False,
    glb: bool = False,
    focal_px: float | None = None,
) -> dict[str, bytes]:
    """One image's files {suffix: bytes} (see the module doc), in `SUFFIXES` order.

    depth: (H, W) float32 from `Predictor.depth`; rgb: the (H, W, 3) image it came from (uint8; 16-bit images are
    scaled to 8 bits for the point colours and the texture); output: what the map means (`Predictor.output`;
    default relative inverse depth);
    focal_px: the pinhole focal length in pixels, needed for `ply` / `glb` (`geometry.camera_focal`).
    """
    files = {".npy": encode_npy(depth)}
    if pfm:
        files[".pfm"] = encode_pfm(depth)
    if png:
        shown = output.png16(depth) if grayscale16 else picture(depth, output, colormap)
        files[".png"] = encode_png(shown, output.png_text())
    if ply or glb:
        if focal_px is None:
            raise ValueError("a focal length is needed for .ply / .glb files")
        colours = rgb if rgb.dtype == np.uint8 else (rgb // 257).astype(np.uint8)
        if ply:
            files[".ply"] = geometry.ply_bytes(depth, colours, output=output, focal_px=focal_px)
        if glb:
            files[".glb"] = geometry.glb_bytes(depth, colours, output=output, focal_px=focal_px)
    return files
