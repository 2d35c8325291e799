"""beit_flax.training.scenes: exact ray casts (plane, sphere, box), the random rooms, and the demo image that
assets/render_scene.py renders with the same ray casts."""

from __future__ import annotations

import importlib.util
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from beit_flax.training import scenes

ASSETS = Path(__file__).resolve().parents[1] / "assets"


def rays_for(xs, ys):
    """Camera rays (z = 1) through image-plane points (x, y)."""
    xs, ys = np.broadcast_arrays(np.asarray(xs, float), np.asarray(ys, float))
    return np.stack([xs, ys, np.ones_like(xs)], -1)


def test_ray_casts_give_exact_z_depth():
    rays = rays_for([0.0, 0.3, -0.2], [0.0, 0.1, 0.25])
    # plane z = 7: every ray reaches it at z = 7
    np.testing.assert_allclose(scenes.intersect_plane(rays, np.array([0.0, 0.0, 1.0]), 7.0)[0], 7.0)
    # floor y = 1.5: the hit's z is 1.5 / y
    t, normal = scenes.intersect_plane(rays, np.array([0.0, 1.0, 0.0]), 1.5)
    np.testing.assert_allclose(t, [np.inf, 15.0, 6.0])
    np.testing.assert_array_equal(normal[0], [0.0, -1.0, 0.0])
    # sphere at z = 5, radius 1: the central ray stops at z = 4, and every hit lies on the sphere
    center = np.array([0.0, 0.0, 5.0])
    rays = rays_for(np.linspace(-0.25, 0.25, 11), 0.0)
    t, normal = scenes.intersect_sphere(rays, center, 1.0)
    hit = np.isfinite(t)
    assert t[5] == pytest.approx(4.0) and 0 < hit.sum() < 11
    points = rays[hit] * t[hit, None]
    np.testing.assert_allclose(np.linalg.norm(points - center, axis=-1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(normal[hit], axis=-1), 1.0, rtol=1e-12)
    # a unit cube at z = 5 turned 45 degrees shows its edge to the central ray at z = 5 - sqrt(2)
    t, _ = scenes.intersect_box(rays_for(0.0, 0.0), center, np.ones(3), np.pi / 4)
    assert t == pytest.approx(5 - np.sqrt(2))
    t, normal = scenes.intersect_box(rays_for([0.0, 0.0], [0.0, 0.2]), center, np.ones(3), 0.0)  # front face z = 4
    np.testing.assert_allclose(t, [4.0, 4.0])
    np.testing.assert_allclose(normal, [[0, 0, -1], [0, 0, -1]], atol=1e-12)
    assert scenes.intersect_box(rays_for(2.0, 0.0), center, np.ones(3), 0.0)[0] == np.inf  # misses


def test_render_scene_gives_rgb_and_finite_z_depth():
    rgb, depth = scenes.render_scene(np.random.default_rng(3), 24, 40)
    assert rgb.shape == (24, 40, 3) and rgb.dtype == np.uint8 and depth.shape == (24, 40) and depth.dtype == np.float32
    assert np.all(np.isfinite(depth)) and np.all(depth > 0.5)  # a closed room: every ray hits something
    again = scenes.render_scene(np.random.default_rng(3), 24, 40)
    np.testing.assert_array_equal(again[0], rgb)
    np.testing.assert_array_equal(again[1], depth)


def test_the_demo_image_is_what_the_asset_script_renders():
    """assets/scene.jpg against a fresh render of assets/render_scene.py, JPEG-coded the same way (quality 90):
    identical with the libjpeg it was made with, a little slack for another (another seed's noise is off by ~3.5)."""
    spec = importlib.util.spec_from_file_location("render_scene", ASSETS / "render_scene.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rgb, depth = module.render()
    assert rgb.shape == (480, 640, 3) and rgb.dtype == np.uint8 and np.isfinite(depth).all()
    encoded = io.BytesIO()
    Image.fromarray(rgb).save(encoded, format="JPEG", quality=90)
    with Image.open(encoded) as ours, Image.open(ASSETS / "scene.jpg") as committed:
        difference = np.abs(np.asarray(ours, np.int16) - np.asarray(committed.convert("RGB"), np.int16))
    assert difference.mean() < 0.5, difference.mean()


def test_clip_windows_one_room_with_the_camera_motion_and_lighting_asked_for():
    rng = np.random.default_rng(4)
    clip, depth = scenes.render_clip(rng, 24, 32, 5, brightness=(0.8, 1.2))
    assert clip.shape == (5, 24, 32, 3) and clip.dtype == np.uint8 and depth.shape == (5, 24, 32)
    np.testing.assert_array_equal(depth, np.broadcast_to(depth[0], depth.shape))  # a static camera
    ratios = clip.reshape(5, -1).astype(float).mean(1) / clip[0].astype(float).mean()
    assert np.ptp(ratios) > 0.05  # each frame its own brightness ...
    lit = clip.astype(float) / ratios[:, None, None, None]
    assert np.abs(lit - clip[0]).mean() < 3  # ... of the same picture (rounding and clipping at white aside)
    _, panned = scenes.render_clip(np.random.default_rng(5), 24, 32, 3, pan_px=8)
    wide_rng = np.random.default_rng(5)
    _, wide = scenes.render_scene(wide_rng, 24, 40)
    for t, x0 in enumerate((0, 4, 8)):  # the window moves right by pan_px over the clip
        np.testing.assert_array_equal(panned[t], wide[:, x0 : x0 + 32])
