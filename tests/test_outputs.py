"""beit_flax.outputs: the bytes `beit-depth predict` writes for one image, MiDaS and ZoeDepth, and only the files
asked for."""

from __future__ import annotations

import io

import numpy as np
import pytest
import trimesh
from PIL import Image

from beit_flax.geometry import glb_bytes, ply_bytes
from beit_flax.images import colorize, colorize_metric, to_png16
from beit_flax.models.depth_output import MetricDepth, RelativeInverseDepth
from beit_flax.outputs import SUFFIXES, image_files, suffixes


@pytest.fixture
def depth_and_image():
    rng = np.random.default_rng(0)
    depth = (1.0 + rng.random((12, 20))).astype(np.float32)
    return depth, rng.integers(0, 256, (12, 20, 3), dtype=np.uint8)


def png(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data))


def test_midas_files_are_the_map_and_its_min_max_colouring(depth_and_image):
    depth, rgb = depth_and_image
    files = image_files(depth, rgb)
    assert list(files) == [".npy", ".png"]
    np.testing.assert_array_equal(np.load(io.BytesIO(files[".npy"])), depth)
    picture = png(files[".png"])
    np.testing.assert_array_equal(np.asarray(picture), colorize(depth))
    assert not picture.text  # min-max per image: no range to state
    gray = png(image_files(depth, rgb, grayscale16=True)[".png"])
    np.testing.assert_array_equal(np.asarray(gray), to_png16(depth))
    assert list(image_files(depth, rgb, png=False)) == [".npy"] == suffixes(png=False)


def test_metric_files_use_the_fixed_range_and_say_so(depth_and_image):
    depth, rgb = depth_and_image
    files = image_files(depth * 3, rgb, output=MetricDepth(10.0), colormap="viridis")
    picture = png(files[".png"])
    np.testing.assert_array_equal(np.asarray(picture), colorize_metric(depth * 3, 10.0, "viridis"))
    assert picture.text == {"depth": "metric, meters", "depth_range_m": "0 10", "near": "bright"}
    gray = png(image_files(depth * 3, rgb, output=MetricDepth(10.0), grayscale16=True)[".png"])
    np.testing.assert_array_equal(np.asarray(gray), MetricDepth(10.0).png16(depth * 3))


@pytest.mark.parametrize("output", [RelativeInverseDepth(), MetricDepth(80.0)])
def test_3d_files_are_the_geometry_module_s(depth_and_image, output):
    depth, rgb = depth_and_image
    files = image_files(depth, rgb, output=output, pfm=True, ply=True, glb=True, focal_px=17.0)
    assert list(files) == list(SUFFIXES) == suffixes(pfm=True, ply=True, glb=True)
    assert files[".ply"] == ply_bytes(depth, rgb, output=output, focal_px=17.0)
    assert files[".glb"] == glb_bytes(depth, rgb, output=output, focal_px=17.0)
    cloud = trimesh.load(io.BytesIO(files[".ply"]), file_type="ply")
    assert len(cloud.vertices) == depth.size
    with pytest.raises(ValueError, match="focal length"):
        image_files(depth, rgb, ply=True)


def test_16_bit_images_colour_the_points_by_their_top_8_bits(depth_and_image):
    depth, rgb = depth_and_image
    wide = rgb.astype(np.uint16) * 257  # the same picture in 16 bits
    ply16 = image_files(depth, wide, ply=True, focal_px=17.0)[".ply"]
    assert ply16 == image_files(depth, rgb, ply=True, focal_px=17.0)[".ply"]
