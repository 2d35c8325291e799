"""Render the demo image assets/scene.jpg: a ray-cast room (checker floor, textured wall, three shaded spheres).

Run once; the JPEG is committed so the demo needs nothing but the repository. Deterministic (fixed seed). The ray
casts are those of the training scenes (`beit_flax.training.scenes`); the layout, colours and noise are this image's.
    python assets/render_scene.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from beit_flax.training.scenes import intersect_plane, intersect_sphere


def render(height: int = 480, width: int = 640, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Returns (H, W, 3) uint8 RGB and (H, W) float32 depth along the ray (distance from the camera; inf: no hit).
    Pinhole camera at the origin (x right, y down, z forward), focal length 0.9 * width pixels."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    focal = 0.9 * width
    rays = np.stack([(xs - width / 2) / focal, (ys - height / 2) / focal, np.ones_like(xs)], axis=-1)
    rays /= np.linalg.norm(rays, axis=-1, keepdims=True)  # unit rays: t is the distance along the ray
    depth = np.full((height, width), np.inf)
    color = np.zeros((height, width, 3))
    light = np.array([-0.5, -1.0, -0.4]) / np.linalg.norm([-0.5, -1.0, -0.4])

    def composite(t: np.ndarray, rgb: np.ndarray) -> None:  # z-buffer one surface in
        mask = t < depth
        depth[mask], color[mask] = t[mask], rgb[mask]

    with np.errstate(invalid="ignore"):  # hit points of rays that miss are inf * 0 = nan until masked out
        t, _ = intersect_plane(rays, np.array([0.0, 1.0, 0.0]), 1.2)  # floor y = 1.2, checkerboard
        hit = rays * t[..., None]
        checker = (np.floor(hit[..., 0] * 1.5) + np.floor(hit[..., 2] * 1.5)) % 2
        composite(t, np.where(checker[..., None] > 0, [0.75, 0.7, 0.6], [0.35, 0.3, 0.28]))

        t, _ = intersect_plane(rays, np.array([0.0, 0.0, 1.0]), 9.0)  # back wall z = 9, noisy vertical stripes
        hit = rays * t[..., None]
        stripes = 0.5 + 0.5 * np.sin(hit[..., 0] * 3.0) * np.cos(hit[..., 1] * 0.7)
        composite(t, np.stack([0.3 + 0.4 * stripes, 0.45 + 0.2 * stripes, 0.6 - 0.2 * stripes], axis=-1))

    spheres = [
        ((-1.4, 0.5, 4.0), 0.7, (0.85, 0.25, 0.2)),
        ((0.9, 0.3, 5.5), 0.9, (0.2, 0.6, 0.3)),
        ((0.1, 0.8, 2.8), 0.4, (0.25, 0.35, 0.9)),
    ]
    for center, radius, rgb in spheres:
        t, normal = intersect_sphere(rays, np.asarray(center), radius)
        shade = 0.25 + 0.75 * np.clip(normal @ light, 0, 1)
        composite(t, np.asarray(rgb) * shade[..., None])

    color = color * (0.9 + 0.1 * rng.random((height, width, 1)))  # a little sensor noise
    return (np.clip(color, 0, 1) * 255).round().astype(np.uint8), depth.astype(np.float32)


if __name__ == "__main__":
    Image.fromarray(render()[0]).save(Path(__file__).with_name("scene.jpg"), quality=90)
