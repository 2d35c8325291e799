"""Render the demo image assets/scene.jpg: a ray-cast room (checker floor, textured wall, three shaded spheres).

Run once; the PNG is committed so the demo needs nothing but the repository. Deterministic (fixed seed).
    python assets/render_scene.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def render(height: int = 480, width: int = 640, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Returns (H, W, 3) uint8 RGB and (H, W) float32 depth along the ray."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    focal = 0.9 * width
    rays = np.stack([(xs - width / 2) / focal, (ys - height / 2) / focal, np.ones_like(xs)], axis=-1)
    rays /= np.linalg.norm(rays, axis=-1, keepdims=True)
    depth = np.full((height, width), np.inf)
    color = np.zeros((height, width, 3))
    light = np.array([-0.5, -1.0, -0.4]) / np.linalg.norm([-0.5, -1.0, -0.4])

    # floor y = 1.2 (camera at origin, y down), checkerboard
    t = np.where(rays[..., 1] > 1e-6, 1.2 / np.maximum(rays[..., 1], 1e-6), np.inf)
    hit = rays * t[..., None]
    checker = (np.floor(hit[..., 0] * 1.5) + np.floor(hit[..., 2] * 1.5)) % 2
    floor_rgb = np.where(checker[..., None] > 0, [0.75, 0.7, 0.6], [0.35, 0.3, 0.28])
    mask = t < depth
    depth[mask], color[mask] = t[mask], floor_rgb[mask]

    # back wall z = 9 with noisy vertical stripes
    t = np.where(rays[..., 2] > 1e-6, 9.0 / rays[..., 2], np.inf)
    hit = rays * t[..., None]
    stripes = 0.5 + 0.5 * np.sin(hit[..., 0] * 3.0) * np.cos(hit[..., 1] * 0.7)
    wall_rgb = np.stack([0.3 + 0.4 * stripes, 0.45 + 0.2 * stripes, 0.6 - 0.2 * stripes], axis=-1)
    mask = t < depth
    depth[mask], color[mask] = t[mask], wall_rgb[mask]

    spheres = [((-1.4, 0.5, 4.0), 0.7, (0.85, 0.25, 0.2)), ((0.9, 0.3, 5.5), 0.9, (0.2, 0.6, 0.3)),
               ((0.1, 0.8, 2.8), 0.4, (0.25, 0.35, 0.9))]
    for center, radius, rgb in spheres:
        center = np.asarray(center)
        b = rays @ center
        disc = b**2 - (center @ center - radius**2)
        t = np.where(disc > 0, b - np.sqrt(np.maximum(disc, 0)), np.inf)
        mask = (t > 0) & (t < depth)
        normal = (rays * t[..., None] - center) / radius
        shade = 0.25 + 0.75 * np.clip(normal @ light, 0, 1)
        depth[mask], color[mask] = t[mask], (np.asarray(rgb) * shade[..., None])[mask]

    color = color * (0.9 + 0.1 * rng.random((height, width, 1)))  # a little sensor noise
    return (np.clip(color, 0, 1) * 255).round().astype(np.uint8), depth.astype(np.float32)


if __name__ == "__main__":
    with np.errstate(invalid="ignore"):  # rays that miss a surface carry inf / nan until masked out
        rgb, _ = render()
    Image.fromarray(rgb).save(Path(__file__).with_name("scene.jpg"), quality=90)
