"""Depth maps as 3D: a coloured point cloud (binary PLY) and a textured mesh (binary glTF, GLB), written by trimesh.

Camera: a pinhole at the origin, principal point at the image centre, square pixels, focal length `focal_px` in
pixels (`camera_focal`: an explicit field of view, else the EXIF focal length, else `DEFAULT_FOV_DEG`). Pixel (u, v)
(column, row) has its centre at (u + 0.5, v + 0.5) and back-projects, at z-depth z, to the camera-frame point
X = (u + 0.5 - W/2) z / f, Y = (v + 0.5 - H/2) z / f, Z = z (x right, y down, looking down +z, as in the image).

Files: both the PLY and the GLB are written in the glTF / OpenGL convention, x right, y up, the camera looking down
-z, i.e. the point (X, -Y, -Z), so that they open the right way up, seen from the camera, in browsers (three.js,
<model-viewer>), Blender (whose glTF importer turns y-up into z-up), MeshLab and trimesh. Positions are float32.

Units: the model's `DepthOutput.z` gives the z-depth. Metric depth (`MetricDepth`) is z in meters, used as is, so the
files are in meters. Relative inverse depth (`RelativeInverseDepth`, MiDaS) has an unknown scale and shift, which no
formula turns into meters; it is mapped to a stated normalised z instead: the nearest pixel at 1 unit, the farthest
at `RELATIVE_NEAR_FAR` units, linear in inverse depth in between. Only the shape up to that convention is
meaningful, not the numbers.

Missing depth (non-finite, or a non-positive metric z) gives no point and no triangle.

Mesh (`mesh`): the pixel grid, subsampled at a whole stride so that its longest side is at most `max_side` (vertices
are exact pixels, at their own depth and pixel centre: no averaging that would blend foreground and background into
points floating between them), two triangles per grid quad, dropping triangles with a missing vertex and those whose
largest z exceeds `EDGE_DEPTH_RATIO` times their smallest (a depth discontinuity: an occlusion edge, not a surface).
The image, at its full size, is the texture (per-vertex UVs at the pixel centres), so the GLB embeds the picture.
"""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from beit_flax.models.depth_output import RELATIVE_NEAR_FAR, DepthOutput

__all__ = ["DEFAULT_FOV_DEG", "EDGE_DEPTH_RATIO", "RELATIVE_NEAR_FAR", "camera_focal", "glb_bytes", "mesh", "ply_bytes"]

if TYPE_CHECKING:  # trimesh (~0.3 s to import) loads only when a 3D file is made, not with the CLI
    import trimesh

DEFAULT_FOV_DEG = 60.0
# An EXIF focal length is input like any other: one that gives a horizontal field of view outside these bounds (a
# 5e-324 mm or 1e308 mm lens) is ignored for the default, and the description says so
EXIF_FOV_RANGE_DEG = (1.0, 170.0)
"""Horizontal field of view (degrees) used when neither an explicit fov nor EXIF gives a focal length: a moderate
wide angle, between a phone's main camera (about 65-70 degrees) and a normal lens (about 40 degrees)."""


EDGE_DEPTH_RATIO = 1.1
"""Mesh triangles whose vertices' max z / min z exceeds this are dropped as spanning a depth discontinuity. A ratio
(not a difference in z) so that one rule fits meters and MiDaS' normalised units, near and far alike. A smooth surface
changes z by a fraction of about tan(incidence angle) / focal_px per pixel, 10% only at grazing angles (beyond about
89 degrees for a 60-degree view 1024 pixels wide, 80 degrees at 64 pixels), while an object in front of its background
jumps by far more."""

FILM_35MM_DIAGONAL_MM = 43.27  # 36 x 24 mm: the diagonal that "35 mm equivalent" focal lengths refer to (CIPA DC-008)

# EXIF tags: Exif sub-IFD pointer, FocalLength, FocalLengthIn35mmFilm, FocalPlaneXResolution, FocalPlaneResolutionUnit
_EXIF_IFD, _FOCAL_LENGTH, _FOCAL_35MM, _FOCAL_PLANE_XRES, _FOCAL_PLANE_UNIT = 0x8769, 0x920A, 0xA405, 0xA20E, 0xA210
_UNIT_MM = {2: 25.4, 3: 10.0, 4: 1.0, 5: 1e-3}  # inch (EXIF's default), cm, and TIFF/EP's mm and micrometre


def focal_from_fov(fov_deg: float, width: int) -> float:
    """Focal length in pixels of a pinhole whose horizontal field of view over `width` pixels is `fov_deg` degrees
    (0 < fov_deg < 180): f = (W / 2) / tan(fov / 2), so 90 degrees gives W / 2."""
    if not 0.0 < fov_deg < 180.0 or width <= 0:
        raise ValueError(f"need 0 < fov < 180 degrees and a positive width, got fov {fov_deg}, width {width}")
    return width / 2.0 / math.tan(math.radians(fov_deg) / 2.0)


def _positive(value) -> float | None:
    try:
        value = float(value)  # Pillow's IFDRational: x/0 reads as nan
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    return value if math.isfinite(value) and value > 0 else None


def _exif_focal(path: str | os.PathLike) -> tuple[float, str] | None:
    """(focal in pixels, description) from the EXIF of `path`, or None; never raises for a bad or absent EXIF."""
    try:
        with Image.open(path) as image:  # reads the header only: no pixel data is decoded
            exif = image.getexif()
            tags = {
                **exif,
                **exif.get_ifd(_EXIF_IFD),
            }  # the focal tags belong in the Exif IFD, a few writers put them in IFD0
            width, height = image.size
    except Exception:  # whatever Pillow raises for a broken file or EXIF, the answer is "no focal length"
        return None
    # Orientations 5-8 rotate by 90 or 270 degrees, swapping width and height. A focal length in pixels is the same
    # either way (square pixels; the diagonal does not change), so neither formula below needs to know.
    if f35 := _positive(tags.get(_FOCAL_35MM)):
        # The 35 mm equivalent matches the image's diagonal to the film's, so it holds at any size the file was saved.
        return f35 * math.hypot(width, height) / FILM_35MM_DIAGONAL_MM, f"EXIF {f35:g} mm (35 mm equiv.)"
    f_mm, xres = _positive(tags.get(_FOCAL_LENGTH)), _positive(tags.get(_FOCAL_PLANE_XRES))
    unit_mm = _UNIT_MM.get(tags.get(_FOCAL_PLANE_UNIT, 2))  # 1 ("no unit") and unknown units cannot be converted
    if f_mm and xres and unit_mm:
        # Pixels per unit on the sensor, at the resolution the camera wrote (a file resized since would be off).
        return f_mm * xres / unit_mm, f"EXIF {f_mm:g} mm (focal plane {xres:g} px per {unit_mm:g} mm)"
    return None


def focal_from_exif(path: str | os.PathLike) -> float | None:
    """Focal length in pixels at the size of the image in `path` (the same after EXIF orientation is applied: rotating
    by 90 / 270 degrees swaps width and height but leaves a square-pixel focal length unchanged), from its EXIF:
    FocalLengthIn35mmFilm (f_px = f35 * hypot(W, H) / 43.27 mm, the 35 mm film diagonal), else FocalLength with
    FocalPlaneXResolution / FocalPlaneResolutionUnit. Only the header is read. None when the tags are absent, zero or
    unreadable, or the file is not an image: it never raises for a bad or absent EXIF."""
    found = _exif_focal(path)
    return None if found is None else found[0]


def camera_focal(path: str | os.PathLike | None, width: int, fov_deg: float | None) -> tuple[float, str]:
    """The focal length in pixels for an image `width` pixels wide, and a short description of where it came from:
    an explicit horizontal `fov_deg` first ("fov 60 deg"), then the EXIF of `path` ("EXIF 26 mm (35 mm equiv.)"),
    then `DEFAULT_FOV_DEG` ("fov 60 deg (default)")."""
    if fov_deg is not None:
        return focal_from_fov(fov_deg, width), f"fov {fov_deg:g} deg"
    default = f"fov {DEFAULT_FOV_DEG:g} deg (default)"
    if path is not None and (found := _exif_focal(path)) is not None:
        focal_px, where = found
        fov = math.degrees(2 * math.atan(width / 2 / focal_px)) if math.isfinite(focal_px) and focal_px > 0 else 0.0
        low, high = EXIF_FOV_RANGE_DEG
        if low <= fov <= high:
            return found
        default = f"fov {DEFAULT_FOV_DEG:g} deg (default; ignored {where}: a {fov:.3g} deg field of view)"
    return focal_from_fov(DEFAULT_FOV_DEG, width), default


def _check(depth: np.ndarray, rgb: np.ndarray, focal_px: float) -> np.ndarray:
    rgb = np.asarray(rgb)
    if rgb.shape != (*np.shape(depth), 3) or rgb.dtype != np.uint8:
        raise ValueError(
            f"rgb must be uint8 (H, W, 3) with depth's (H, W) {np.shape(depth)}, got {rgb.dtype} {rgb.shape}"
        )
    if not (math.isfinite(focal_px) and focal_px > 0):
        raise ValueError(f"focal_px must be a positive number of pixels, got {focal_px}")
    return rgb


def _points(z: np.ndarray, rows: np.ndarray, cols: np.ndarray, size: tuple[int, int], focal_px: float) -> np.ndarray:
    """(rows, cols, 3) float32 points in the files' convention (X, -Y, -Z) of those pixels of an (H, W) image."""
    height, width = size
    x = (cols[None, :] + 0.5 - width / 2) * z / focal_px
    y = (rows[:, None] + 0.5 - height / 2) * z / focal_px
    return np.stack([x, -y, -z], axis=-1).astype(np.float32)


def point_cloud(depth: np.ndarray, rgb: np.ndarray, *, output: DepthOutput, focal_px: float) -> trimesh.PointCloud:
    """A point per pixel with finite depth, in row-major pixel order, coloured by `rgb` (H, W, 3) uint8, at the
    back-projection of `output.z(depth)` (H, W, `depth_output`) through a pinhole of focal `focal_px` pixels, in the
    module's file convention (x right, y up, -z forward; in `output.z_units()`)."""
    rgb = _check(depth, rgb, focal_px)
    z = output.z(depth)
    height, width = z.shape
    valid = np.isfinite(z)
    points = _points(z.astype(np.float64), np.arange(height), np.arange(width), z.shape, focal_px)[valid]
    import trimesh

    return trimesh.PointCloud(points, colors=rgb[valid])


def mesh(
    depth: np.ndarray, rgb: np.ndarray, *, output: DepthOutput, focal_px: float, max_side: int = 1024
) -> trimesh.Trimesh:
    """A textured triangle mesh of the depth map (H, W) with `rgb` (H, W, 3) uint8 as its texture.

    Vertices: the pixels at every `stride`-th row and column from the first, stride = ceil(max(H, W) / max_side)
    (1 for images up to `max_side`), each at its own depth and pixel centre, in the module's file convention; UVs at
    the same pixel centres of the full-size texture. Faces: two per grid quad, counter-clockwise seen from the camera,
    without those touching a missing vertex or spanning more than `EDGE_DEPTH_RATIO` in z. Vertices in no face are
    dropped (so a missing or isolated pixel leaves no vertex either)."""
    import trimesh

    rgb = _check(depth, rgb, focal_px)
    if max_side < 2:
        raise ValueError(f"max_side must be at least 2, got {max_side}")
    z_full = output.z(depth)
    height, width = z_full.shape
    stride = -(-max(height, width) // max_side)
    rows, cols = np.arange(0, height, stride), np.arange(0, width, stride)
    z = z_full[::stride, ::stride].astype(np.float64)
    index = np.arange(z.size).reshape(z.shape)
    # Quad corners top-left a, top-right b, bottom-left c, bottom-right d (image rows go down, y in the file goes up):
    # (a, c, b) and (b, c, d) turn counter-clockwise seen from the camera, so their normals face it (glTF front faces).
    a, b, c, d = index[:-1, :-1], index[:-1, 1:], index[1:, :-1], index[1:, 1:]
    faces = np.concatenate([np.stack([a, c, b], -1).reshape(-1, 3), np.stack([b, c, d], -1).reshape(-1, 3)])
    corner_z = z.reshape(-1)[faces]  # nan for a missing vertex: the comparisons below are then False
    keep = np.all(corner_z > 0, axis=1) & (corner_z.max(axis=1) <= EDGE_DEPTH_RATIO * corner_z.min(axis=1))
    faces = faces[keep]
    used = np.zeros(z.size, bool)
    used[faces] = True
    remap = np.cumsum(used) - 1  # old vertex index -> index among the used ones
    vertices = _points(z, rows, cols, (height, width), focal_px).reshape(-1, 3)[used]
    # trimesh UVs have their origin at the bottom left (OpenGL); its glTF export flips v for glTF's top-left origin.
    uv = np.stack(np.broadcast_arrays((cols[None, :] + 0.5) / width, 1.0 - (rows[:, None] + 0.5) / height), -1)
    # An explicit PBR material: trimesh's default SimpleMaterial exports as baseColorFactor 0.4 (a texture at 40%
    # brightness) and no metallicFactor (glTF's default 1, a dark mirror). Matte, not metal, and double-sided so the
    # surface stays visible when orbited to its back.
    material = trimesh.visual.material.PBRMaterial(
        baseColorTexture=Image.fromarray(rgb), metallicFactor=0.0, roughnessFactor=1.0, doubleSided=True
    )
    visual = trimesh.visual.TextureVisuals(uv=uv.reshape(-1, 2)[used], material=material)
    # process=False: keep the vertices and faces as built, in grid order, and skip trimesh's merging and cleaning pass.
    return trimesh.Trimesh(vertices, remap[faces], visual=visual, process=False)


def ply_bytes(depth: np.ndarray, rgb: np.ndarray, *, output: DepthOutput, focal_px: float) -> bytes:
    """Binary (little-endian) PLY of `point_cloud`: float32 x, y, z and uint8 RGBA per point, one point per pixel with
    finite depth."""
    return point_cloud(depth, rgb, output=output, focal_px=focal_px).export(file_type="ply", encoding="binary")


def glb_bytes(depth: np.ndarray, rgb: np.ndarray, *, output: DepthOutput, focal_px: float) -> bytes:
    """Binary glTF (GLB) of `mesh` (at its default `max_side`), the image embedded as its PNG base-colour texture."""
    return mesh(depth, rgb, output=output, focal_px=focal_px).export(file_type="glb")
