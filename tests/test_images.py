"""images.py: decoding handles the formats and EXIF, refuses bad files; PNG rendering follows MiDaS write_depth."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from predict_helpers import scene, write_images

from beit_flax.images import ImageError, colorize, colormap_lut, depth_range, read_image, to_png16


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return write_images(tmp_path_factory.mktemp("images"))


def test_read_image_formats(images):
    for name, (path, size) in images.items():
        image = read_image(path)
        assert image.shape == (*size, 3), name
        assert image.dtype == (np.uint16 if name == "gray16" else np.uint8), name
    gray = read_image(images["gray"][0])
    assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 0] == gray[..., 2]).all()
    rgba = read_image(images["rgba"][0])  # alpha dropped, colours kept (cv2.IMREAD_COLOR does the same)
    np.testing.assert_array_equal(rgba, np.asarray(Image.open(images["rgba"][0]))[..., :3])


def test_read_image_applies_exif_orientation(images):
    path, _ = images["rotated"]
    stored = np.asarray(Image.open(path).convert("RGB"))  # (60, 150): as stored, orientation 6 not applied
    shown = read_image(path)
    assert stored.shape == (60, 150, 3) and shown.shape == (150, 60, 3)
    np.testing.assert_array_equal(shown, np.rot90(stored, k=-1))  # 6 = rotate 90 degrees clockwise


def test_read_image_refuses_bad_files(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.png").write_text("not an image")
    Image.fromarray(scene(40, 60)).save(tmp_path / "cut.jpg")
    (tmp_path / "cut.jpg").write_bytes((tmp_path / "cut.jpg").read_bytes()[:300])
    Image.new("L", (3000, 2000)).save(tmp_path / "big.png")
    cases = {
        "empty.jpg": "empty file",
        "text.png": "not an image",
        "cut.jpg": "cannot read",
        "missing.jpg": "cannot read",
    }
    for name, message in cases.items():
        with pytest.raises(ImageError, match=message):
            read_image(tmp_path / name)
    with pytest.raises(ImageError, match=r"3000x2000 = 6 MP is over the limit of 5 MP"):
        read_image(tmp_path / "big.png", max_pixels=5_000_000)
    assert read_image(tmp_path / "big.png").shape == (2000, 3000, 3)


# --- rendering ------------------------------------------------------------------------------------------------------


def test_png16_and_colormap_follow_midas_write_depth():
    depth = np.array([[-0.5, 0.0], [1.0, 2.5]], np.float32)
    np.testing.assert_array_equal(to_png16(depth), [[0, 10922], [32767, 65535]])  # truncated, as astype("uint16")
    assert not to_png16(np.full((3, 3), 7.0)).any()  # a flat map is all zeros, not a division by zero
    np.testing.assert_allclose(depth_range(depth), [[0, 1 / 6], [0.5, 1]], atol=1e-7)
    picture = colorize(depth, "inferno")
    assert picture.shape == (2, 2, 3) and picture.dtype == np.uint8
    np.testing.assert_array_equal(picture[1, 1], colormap_lut("inferno")[255])
    np.testing.assert_array_equal(colormap_lut("inferno")[[0, 255]], [[0, 0, 4], [252, 255, 164]])  # matplotlib's ends
    with pytest.raises(ValueError, match="unknown colormap 'jet'"):
        colorize(depth, "jet")


# --- environment ----------------------------------------------------------------------------------------------------
