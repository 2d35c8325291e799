"""Procedural scenes with exact depth: a small numpy ray tracer (planes, spheres, boxes; Lambert shading).

`render_scene` makes the random rooms that training and the tests use (`data.synthetic_scenes`); the intersection
functions are the tracer's building blocks, also used by `assets/render_scene.py` for the demo image.

Rays are cast from the origin (camera frame: x right, y down, z forward). A ray direction may have any length; the
returned ray parameter t is in units of that length, so with camera-frame z = 1 directions t is the z-depth of the
hit. inf where there is no hit in front of the camera; normals face the ray.
"""

from __future__ import annotations

import numpy as np


def _solid_texture(rng: np.random.Generator, points: np.ndarray) -> np.ndarray:
    """A random procedural texture evaluated at world points (..., 3) -> RGB (..., 3) in [0, 1]."""
    base, other = rng.uniform(0.1, 0.9, 3), rng.uniform(0.1, 0.9, 3)
    kind = rng.integers(4)
    if kind == 0:  # 3-D checker
        cells = np.floor(points * rng.uniform(1.0, 4.0)).sum(-1) % 2
        weight = cells[..., None]
    elif kind == 1:  # stripes along a random direction
        direction = rng.normal(size=3)
        weight = (0.5 + 0.5 * np.sin(points @ direction * rng.uniform(2.0, 8.0)))[..., None]
    elif kind == 2:  # smooth noise: a few random plane waves
        waves = sum(np.sin(points @ rng.normal(0, 3.0, 3) + rng.uniform(0, 6.3)) for _ in range(4))
        weight = (0.5 + waves / 8)[..., None]
    else:  # nearly plain
        weight = 0.1 * np.sin(points[..., :1] * 5.0) + 0.1
    return base + (other - base) * weight


def _rotation_y(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def intersect_plane(rays: np.ndarray, normal: np.ndarray, offset: float) -> tuple[np.ndarray, np.ndarray]:
    """The plane {x : normal . x = offset}, offset > 0 (the origin is on the side `normal` points away from)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        t = offset / (rays @ normal)
    return np.where(t > 0, t, np.inf), np.broadcast_to(-np.asarray(normal, float), rays.shape)


def intersect_sphere(rays: np.ndarray, center: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """The nearer root of |t r - c|^2 = radius^2 (a sphere that contains the origin is not supported)."""
    a, b = np.sum(rays * rays, -1), rays @ center
    disc = b * b - a * (center @ center - radius**2)
    t = np.where(disc > 0, (b - np.sqrt(np.maximum(disc, 0))) / a, np.inf)
    t = np.where(t > 0, t, np.inf)
    return t, (rays * np.where(np.isfinite(t), t, 0)[..., None] - center) / radius


def intersect_box(
    rays: np.ndarray, center: np.ndarray, half: np.ndarray, angle: float
) -> tuple[np.ndarray, np.ndarray]:
    """A box of half sizes `half` (x, y, z) about `center`, rotated by `angle` about the y axis (slab method)."""
    rot = _rotation_y(angle)
    origin, direction = -center @ rot, rays @ rot  # in the box frame (x @ rot = rot^T x)
    with np.errstate(divide="ignore", invalid="ignore"):
        t1, t2 = (-half - origin) / direction, (half - origin) / direction
    near = np.nan_to_num(np.minimum(t1, t2), nan=-np.inf)  # 0/0: the ray lies in a slab plane, no constraint
    far = np.nan_to_num(np.maximum(t1, t2), nan=np.inf)
    t_in, t_out = near.max(-1), far.min(-1)
    axis = near.argmax(-1)
    face = -np.sign(np.take_along_axis(direction, axis[..., None], -1)) * np.eye(3)[axis]
    return np.where((t_in <= t_out) & (t_in > 0), t_in, np.inf), face @ rot.T


def render_scene(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Ray-cast a random room: floor, back wall, optional side wall and ceiling, boxes and spheres, each with a
    procedural texture and Lambert shading. Pinhole camera at the origin (x right, y down, z forward), random field
    of view and pitch.

    Returns (H, W, 3) uint8 RGB and (H, W) float32 exact z-depth (distance along the optical axis) at the pixel
    centres; inf where a ray hits nothing.
    """
    focal = width / (2 * np.tan(np.radians(rng.uniform(50, 75)) / 2))
    ys, xs = np.mgrid[0:height, 0:width] + 0.5
    rays_cam = np.stack([(xs - width / 2) / focal, (ys - height / 2) / focal, np.ones_like(xs)], axis=-1)
    pitch = np.radians(rng.uniform(-8, 12))  # camera tilt about x
    c, s = np.cos(pitch), np.sin(pitch)
    # rotating the rays keeps t = camera-frame z-depth (the rotation preserves the camera-frame z = 1 of each ray)
    rays = rays_cam @ np.array([[1, 0, 0], [0, c, -s], [0, s, c]]).T
    depth = np.full((height, width), np.inf)
    normal = np.zeros((height, width, 3))
    albedo = np.zeros((height, width, 3))

    def composite(hit_t: tuple[np.ndarray, np.ndarray]) -> None:  # z-buffer one surface in, with its own texture
        t, normals = hit_t
        hit = t < depth
        depth[hit], normal[hit] = t[hit], normals[hit]
        albedo[hit] = _solid_texture(rng, rays[hit] * t[hit][:, None])

    floor_y = rng.uniform(1.0, 1.8)
    composite(intersect_plane(rays, np.array([0.0, 1.0, 0.0]), floor_y))
    wall = _rotation_y(np.radians(rng.uniform(-30, 30))) @ np.array([0.0, 0.0, 1.0])
    composite(intersect_plane(rays, wall, rng.uniform(6, 14)))
    if rng.random() < 0.5:
        composite(intersect_plane(rays, np.array([rng.choice([-1.0, 1.0]), 0.0, 0.0]), rng.uniform(2, 4)))
    if rng.random() < 0.3:
        composite(intersect_plane(rays, np.array([0.0, -1.0, 0.0]), rng.uniform(1.5, 3)))
    for _ in range(rng.integers(0, 4)):  # boxes standing on the floor
        half = rng.uniform(0.15, 0.6, 3)
        center = np.array([rng.uniform(-2.5, 2.5), floor_y - half[1], rng.uniform(2.5, 8)])
        composite(intersect_box(rays, center, half, rng.uniform(0, np.pi)))
    for _ in range(rng.integers(0, 4)):  # spheres, most resting on the floor
        radius = rng.uniform(0.2, 0.8)
        y = floor_y - radius if rng.random() < 0.6 else rng.uniform(-0.5, floor_y - radius)
        composite(intersect_sphere(rays, np.array([rng.uniform(-2.5, 2.5), y, rng.uniform(2.0, 8.0)]), radius))

    light = rng.normal(size=3) * [1.0, 0.3, 1.0] + [0.0, -1.0, -0.5]  # from above, somewhat towards the camera
    light /= np.linalg.norm(light)
    shade = 0.3 + 0.7 * np.clip(normal @ light, 0, 1)
    rgb = albedo * shade[..., None] * (0.95 + 0.05 * rng.random((height, width, 1)))  # a little sensor noise
    return (np.clip(rgb, 0, 1) * 255).round().astype(np.uint8), depth.astype(np.float32)


def render_clip(
    rng: np.random.Generator,
    height: int,
    width: int,
    frames: int,
    *,
    brightness: tuple[float, float] = (1.0, 1.0),
    jitter_px: int = 0,
    pan_px: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """A video of one random room (`render_scene`): (frames, H, W, 3) uint8 and its exact z-depth (frames, H, W)
    float32 (inf where a ray hits nothing).

    The room is rendered once, `jitter_px + pan_px` pixels wider and `jitter_px` taller; each frame is a window of it:
    the camera pans `pan_px` pixels left to right over the clip (a sideways move) and shakes by a random 0..jitter_px
    offset in x and y per frame. Each frame's brightness is scaled by a random factor in `brightness` (lighting
    flicker; clipped at white).
    """
    wide, wide_depth = render_scene(rng, height + jitter_px, width + jitter_px + pan_px)
    clip = np.empty((frames, height, width, 3), np.uint8)
    depth = np.empty((frames, height, width), np.float32)
    for t in range(frames):
        dy, dx = rng.integers(0, jitter_px + 1, 2)
        x0 = dx + round(pan_px * t / max(frames - 1, 1))
        window = wide[dy : dy + height, x0 : x0 + width].astype(np.float32)
        clip[t] = np.clip(window * rng.uniform(*brightness), 0, 255).round().astype(np.uint8)
        depth[t] = wide_depth[dy : dy + height, x0 : x0 + width]
    return clip, depth
