"""geometry.py: focal lengths from fov / EXIF, MiDaS' normalised z, PLY point clouds and GLB meshes read by trimesh."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import trimesh
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image
from PIL.TiffImagePlugin import IFDRational

from beit_flax.geometry import (
    DEFAULT_FOV_DEG,
    EDGE_DEPTH_RATIO,
    RELATIVE_NEAR_FAR,
    camera_focal,
    focal_from_exif,
    focal_from_fov,
    glb_bytes,
    mesh,
    ply_bytes,
    point_cloud,
)
from beit_flax.models.depth_output import MetricDepth, RelativeInverseDepth

METRIC, RELATIVE = MetricDepth(10.0), RelativeInverseDepth()


def z_of(depth, *, metric: bool):
    """The z-depth the 3D files use: `DepthOutput.z` of metric or relative depth."""
    return (METRIC if metric else RELATIVE).z(depth)


FOCAL_LENGTH, FOCAL_35MM, FOCAL_PLANE_XRES, FOCAL_PLANE_UNIT = 0x920A, 0xA405, 0xA20E, 0xA210


def write_exif_image(path, size=(400, 300), orientation=None, in_ifd0=False, fmt="JPEG", **tags):
    """An image of `size` (W, H) whose EXIF carries `tags` (name -> value), in the Exif IFD unless `in_ifd0`."""
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    ifd = exif if in_ifd0 else exif.get_ifd(0x8769)
    codes = {"f35": FOCAL_35MM, "focal": FOCAL_LENGTH, "xres": FOCAL_PLANE_XRES, "unit": FOCAL_PLANE_UNIT}
    for name, value in tags.items():
        ifd[codes[name]] = value
    # As bytes: Pillow's PNG writer skips an Exif whose IFD0 is empty even when it has an Exif IFD.
    Image.new("RGB", size, (90, 120, 150)).save(path, fmt, exif=exif.tobytes())
    return path


def scene_rgb(height, width):
    """A distinct colour per pixel, so that a point's colour names its pixel."""
    v, u = np.mgrid[:height, :width]
    return np.stack([u * 20 % 256, v * 30 % 256, (u + v * width) % 256], -1).astype(np.uint8)


def pinhole(u, v, z, size, focal):
    """The file-convention point (X, -Y, -Z) of pixel (u, v) at z-depth z, written out by hand."""
    height, width = size
    return np.array([(u + 0.5 - width / 2) * z / focal, -(v + 0.5 - height / 2) * z / focal, -z])


def load_glb(data: bytes) -> trimesh.Trimesh:
    loaded = trimesh.load(io.BytesIO(data), file_type="glb")
    if isinstance(loaded, trimesh.Scene):
        assert len(loaded.geometry) == 1
        (loaded,) = loaded.geometry.values()
    assert isinstance(loaded, trimesh.Trimesh)
    return loaded


# --- focal lengths ------------------------------------------------------------------------------------------------


def test_focal_from_fov():
    assert focal_from_fov(90.0, 640) == pytest.approx(320.0)
    assert focal_from_fov(60.0, 1000) == pytest.approx(500.0 * math.sqrt(3.0))  # 500 / tan(30 deg)
    assert focal_from_fov(120.0, 300) == pytest.approx(150.0 / math.sqrt(3.0))
    for fov, width in [(0.0, 640), (180.0, 640), (-10.0, 640), (60.0, 0)]:
        with pytest.raises(ValueError):
            focal_from_fov(fov, width)


def test_focal_from_exif_35mm_equivalent(tmp_path):
    path = write_exif_image(tmp_path / "f35.jpg", size=(400, 300), f35=26)
    assert focal_from_exif(path) == pytest.approx(26 * 500 / 43.27)  # hypot(400, 300) = 500
    # Preferred over FocalLength + focal plane resolution, which here would say 425 px.
    both = write_exif_image(tmp_path / "both.jpg", size=(400, 300), f35=26, focal=4.25, xres=1000.0, unit=3)
    assert focal_from_exif(both) == pytest.approx(26 * 500 / 43.27)
    # A few writers put the tag in IFD0; PNG carries EXIF too.
    ifd0 = write_exif_image(tmp_path / "ifd0.jpg", size=(400, 300), in_ifd0=True, f35=52)
    assert focal_from_exif(ifd0) == pytest.approx(52 * 500 / 43.27)
    png = write_exif_image(tmp_path / "f35.png", size=(400, 300), fmt="PNG", f35=26)
    assert focal_from_exif(png) == pytest.approx(26 * 500 / 43.27)


def test_focal_from_exif_focal_plane(tmp_path):
    inch = write_exif_image(tmp_path / "inch.jpg", focal=IFDRational(425, 100), xres=IFDRational(3000, 1), unit=2)
    assert focal_from_exif(inch) == pytest.approx(4.25 * 3000 / 25.4)
    cm = write_exif_image(tmp_path / "cm.jpg", focal=4.25, xres=1000.0, unit=3)
    assert focal_from_exif(cm) == pytest.approx(425.0)
    default_unit = write_exif_image(tmp_path / "nounit.jpg", focal=4.25, xres=3000.0)  # EXIF's default unit: inch
    assert focal_from_exif(default_unit) == pytest.approx(4.25 * 3000 / 25.4)
    zero_35mm = write_exif_image(tmp_path / "zero35.jpg", f35=0, focal=4.25, xres=1000.0, unit=3)  # 0 = unknown
    assert focal_from_exif(zero_35mm) == pytest.approx(425.0)


def test_focal_from_exif_rotated(tmp_path):
    # Orientation 6 (rotate 90 degrees): shown as 300 x 400; the focal length in pixels does not change.
    for orientation in (1, 6, 8):
        rotated = write_exif_image(tmp_path / f"r{orientation}.jpg", size=(400, 300), orientation=orientation, f35=26)
        assert focal_from_exif(rotated) == pytest.approx(26 * 500 / 43.27)
        plane = write_exif_image(
            tmp_path / f"p{orientation}.jpg", orientation=orientation, focal=4.25, xres=1e3, unit=3
        )
        assert focal_from_exif(plane) == pytest.approx(425.0)


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")  # Pillow's word on junk_exif.jpg
def test_focal_from_exif_absent_or_bad(tmp_path):
    Image.new("RGB", (40, 30)).save(tmp_path / "plain.jpg")
    Image.new("RGB", (40, 30)).save(tmp_path / "plain.png")
    write_exif_image(tmp_path / "orientation_only.jpg", orientation=6)
    write_exif_image(tmp_path / "zero.jpg", f35=0, focal=0.0, xres=3000.0)
    write_exif_image(tmp_path / "no_plane.jpg", focal=4.25)  # a focal length in mm alone has no pixel size
    write_exif_image(tmp_path / "unitless.jpg", focal=4.25, xres=3000.0, unit=1)  # 1 = no absolute unit
    write_exif_image(tmp_path / "zero_den.jpg", focal=IFDRational(425, 0), xres=3000.0)  # x/0: nan
    (tmp_path / "text.jpg").write_text("not an image")
    (tmp_path / "empty.jpg").write_bytes(b"")
    # A JPEG whose APP1 Exif segment is garbage, and a JPEG cut after its header.
    good = (tmp_path / "plain.jpg").read_bytes()
    junk = b"Exif\x00\x00II*\x00\xff\xff\xff\x7f" + bytes(range(256)) * 2
    (tmp_path / "junk_exif.jpg").write_bytes(
        good[:2] + b"\xff\xe1" + (len(junk) + 2).to_bytes(2, "big") + junk + good[2:]
    )
    (tmp_path / "cut.jpg").write_bytes(write_exif_image(tmp_path / "full.jpg", f35=26).read_bytes()[:40])
    names = ["plain.jpg", "plain.png", "orientation_only.jpg", "zero.jpg", "no_plane.jpg", "unitless.jpg"]
    names += ["zero_den.jpg", "text.jpg", "empty.jpg", "junk_exif.jpg", "cut.jpg", "missing.jpg"]
    for name in names:
        assert focal_from_exif(tmp_path / name) is None, name
    assert focal_from_exif(tmp_path) is None  # a directory
    assert focal_from_exif(str(tmp_path / "full.jpg")) == pytest.approx(26 * math.hypot(400, 300) / 43.27)


def test_camera_focal_precedence(tmp_path):
    exif = write_exif_image(tmp_path / "exif.jpg", size=(400, 300), f35=26)
    Image.new("RGB", (400, 300)).save(tmp_path / "plain.jpg")
    assert camera_focal(exif, 400, 90.0) == (pytest.approx(200.0), "fov 90 deg")  # explicit fov wins over EXIF
    assert camera_focal(exif, 400, None) == (pytest.approx(26 * 500 / 43.27), "EXIF 26 mm (35 mm equiv.)")
    default = (pytest.approx(200.0 * math.sqrt(3.0)), "fov 60 deg (default)")
    assert DEFAULT_FOV_DEG == 60.0
    assert camera_focal(tmp_path / "plain.jpg", 400, None) == default
    assert camera_focal(None, 400, None) == default
    plane = write_exif_image(tmp_path / "plane.jpg", focal=4.25, xres=1000.0, unit=3)
    focal, description = camera_focal(plane, 400, None)
    assert focal == pytest.approx(425.0) and description.startswith("EXIF 4.25 mm")


# --- z-depth ------------------------------------------------------------------------------------------------------


def test_z_depth_metric_passthrough():
    depth = np.array([[0.5, 2.0, 80.0], [np.nan, np.inf, -1.0], [0.0, 3.25, 1e-3]], np.float32)
    z = z_of(depth, metric=True)
    assert z.dtype == np.float32 and z.shape == (3, 3)
    np.testing.assert_array_equal(z, np.float32([[0.5, 2.0, 80.0], [np.nan, np.nan, np.nan], [np.nan, 3.25, 1e-3]]))


def test_z_depth_relative_values():
    inverse = np.array([[0.0, 1.0], [0.5, 2.0]], np.float32)  # n = 0, 0.5, 0.25, 1
    z = z_of(inverse, metric=False)
    assert z.dtype == np.float32
    np.testing.assert_allclose(z, [[10.0, 1 / (0.1 + 0.45)], [1 / (0.1 + 0.225), 1.0]], rtol=1e-6)
    assert RELATIVE_NEAR_FAR == 10.0
    # Affine invariant, as MiDaS' output is; missing values are skipped by the normalisation and stay missing.
    np.testing.assert_allclose(z_of(3.0 * inverse - 7.0, metric=False), z, rtol=1e-6)
    holes = np.array([[0.0, np.nan], [-np.inf, 2.0]], np.float32)
    np.testing.assert_array_equal(z_of(holes, metric=False), [[10.0, np.nan], [np.nan, 1.0]])


def test_z_depth_relative_degenerate():
    np.testing.assert_array_equal(z_of(np.full((3, 4), 0.7, np.float32), metric=False), np.ones((3, 4)))
    np.testing.assert_array_equal(z_of(np.array([[np.nan, 5.0]]), metric=False), [[np.nan, 1.0]])
    assert np.isnan(z_of(np.full((2, 2), np.nan), metric=False)).all()
    # A span that overflows float32 is still normalised (in float64).
    np.testing.assert_allclose(z_of(np.array([[-3e38, 3e38]], np.float32), metric=False), [[10.0, 1.0]])
    with pytest.raises(ValueError):
        z_of(np.zeros((2, 2, 1)), metric=False)


@settings(max_examples=60, deadline=None)
@given(arrays(np.float32, st.tuples(st.integers(1, 6), st.integers(2, 6)), elements=st.floats(-1e3, 1e3, width=32)))
def test_z_depth_relative_properties(inverse):
    z = z_of(inverse, metric=False)
    assert z.dtype == np.float32 and z.shape == inverse.shape
    if inverse.max() == inverse.min():
        np.testing.assert_array_equal(z, 1.0)
        return
    assert z[np.unravel_index(inverse.argmax(), z.shape)] == pytest.approx(1.0)  # nearest at 1
    assert z[np.unravel_index(inverse.argmin(), z.shape)] == pytest.approx(RELATIVE_NEAR_FAR)  # farthest at 10
    assert (z >= 1.0 - 1e-6).all() and (z <= RELATIVE_NEAR_FAR * (1 + 1e-6)).all()
    order = np.argsort(inverse, axis=None, kind="stable")  # increasing inverse depth: z never increases
    assert (np.diff(z.reshape(-1)[order]) <= 1e-6).all()


# --- PLY ----------------------------------------------------------------------------------------------------------

SIZE = (3, 5)  # (H, W): pixel (2, 1) has its centre at (W/2, H/2), on the optical axis


def metric_depth():
    depth = np.array([[2.0, 2.5, 3.0, 3.5, 4.0], [1.0, 1.5, 7.0, 2.0, np.nan], [6.0, 5.0, 4.0, 3.0, 9.0]], np.float32)
    return depth, scene_rgb(*SIZE)


def test_ply_header_and_points():
    depth, rgb = metric_depth()
    data = ply_bytes(depth, rgb, output=METRIC, focal_px=4.0)
    assert data.startswith(b"ply\nformat binary_little_endian 1.0\n")
    header = data[: data.index(b"end_header\n")].decode()
    assert "element vertex 14\n" in header and "property float x\n" in header and "property uchar red\n" in header
    cloud = trimesh.load(io.BytesIO(data), file_type="ply")
    assert isinstance(cloud, trimesh.PointCloud) and len(cloud.vertices) == 14  # 15 pixels, one nan
    rows, cols = np.nonzero(np.isfinite(depth))  # row-major, as written
    np.testing.assert_array_equal(cloud.colors[:, :3], rgb[rows, cols])
    expected = np.array([pinhole(u, v, depth[v, u], SIZE, 4.0) for v, u in zip(rows, cols)])
    np.testing.assert_allclose(cloud.vertices, expected, rtol=1e-6, atol=1e-7)
    # By hand: the centre pixel (u, v) = (2, 1), z = 7, lies on the axis, in front of the camera (-z); the top-left
    # pixel (z = 2) at X = (0.5 - 2.5) 2 / 4 = -1 (left), Y = (0.5 - 1.5) 2 / 4 = -0.5, written as y = +0.5 (up);
    # the bottom-right one (z = 9) at X = 2 * 9 / 4, Y = 9 / 4, written as y = -2.25 (down).
    np.testing.assert_allclose(cloud.vertices[7], [0.0, 0.0, -7.0], atol=1e-7)
    np.testing.assert_allclose(cloud.vertices[0], [-1.0, 0.5, -2.0], rtol=1e-7)
    np.testing.assert_allclose(cloud.vertices[-1], [4.5, -2.25, -9.0], rtol=1e-7)
    np.testing.assert_array_equal(cloud.colors[7, :3], rgb[1, 2])


def test_ply_relative_scale():
    inverse = np.array([[4.0, 1.0, 2.5], [np.inf, 3.0, 1.0]], np.float32)
    cloud = trimesh.load(
        io.BytesIO(ply_bytes(inverse, scene_rgb(2, 3), output=RELATIVE, focal_px=10.0)), file_type="ply"
    )
    assert len(cloud.vertices) == 5
    np.testing.assert_allclose(-cloud.vertices[:, 2], [1.0, 10.0, 1 / (0.1 + 0.45), 1 / (0.1 + 0.6), 10.0], rtol=1e-6)
    # The point cloud object itself: float32-exact positions, RGBA colours.
    direct = point_cloud(inverse, scene_rgb(2, 3), output=RELATIVE, focal_px=10.0)
    np.testing.assert_array_equal(direct.vertices, cloud.vertices)
    assert direct.colors.shape == (5, 4)


def test_inputs_checked():
    depth, rgb = metric_depth()
    with pytest.raises(ValueError):
        ply_bytes(depth, rgb[:, :4], output=METRIC, focal_px=4.0)
    with pytest.raises(ValueError):
        ply_bytes(depth, rgb.astype(np.float32), output=METRIC, focal_px=4.0)
    with pytest.raises(ValueError):
        glb_bytes(depth, rgb, output=METRIC, focal_px=0.0)


# --- GLB ----------------------------------------------------------------------------------------------------------


def test_glb_plane():
    height, width = 4, 5
    rgb = scene_rgb(height, width)
    data = glb_bytes(np.full((height, width), 2.0, np.float32), rgb, output=METRIC, focal_px=4.0)
    assert data[:4] == b"glTF"
    loaded = load_glb(data)
    assert len(loaded.vertices) == 20 and len(loaded.faces) == 2 * 3 * 4
    # Vertices in pixel order; the top-left one by hand: X = (0.5 - 2.5) 2 / 4 = -1, Y = (0.5 - 2) 2 / 4 = -0.75.
    np.testing.assert_allclose(loaded.vertices[0], [-1.0, 0.75, -2.0], rtol=1e-7)
    expected = np.array([pinhole(u, v, 2.0, (height, width), 4.0) for v in range(height) for u in range(width)])
    np.testing.assert_allclose(loaded.vertices, expected, rtol=1e-6)
    np.testing.assert_allclose(loaded.face_normals, np.tile([0.0, 0.0, 1.0], (24, 1)), atol=1e-6)  # facing the camera
    # The texture is the image itself, and each vertex's UV lands on its own pixel's centre.
    texture = loaded.visual.material.baseColorTexture
    assert texture.size == (width, height)
    np.testing.assert_array_equal(np.asarray(texture.convert("RGB")), rgb)
    uv = loaded.visual.uv
    pixel = np.stack([uv[:, 0] * width - 0.5, (1.0 - uv[:, 1]) * height - 0.5], -1)
    np.testing.assert_allclose(pixel, np.stack(np.meshgrid(range(width), range(height)), -1).reshape(-1, 2), atol=1e-5)
    material = loaded.visual.material
    # Matte and at full brightness (no baseColorFactor dimming the picture), as written.
    assert material.metallicFactor == 0.0 and material.roughnessFactor == 1.0 and material.baseColorFactor is None


def test_glb_missing_pixels():
    depth = np.full((4, 5), 2.0, np.float32)
    depth[0, 0] = np.nan  # a corner: in one triangle
    depth[2, 2] = np.inf  # an interior vertex: in six triangles
    loaded = load_glb(glb_bytes(depth, scene_rgb(4, 5), output=METRIC, focal_px=4.0))
    assert len(loaded.vertices) == 18 and len(loaded.faces) == 24 - 1 - 6
    assert np.isfinite(loaded.vertices).all()
    assert not np.isclose(loaded.vertices, pinhole(2, 2, 2.0, (4, 5), 4.0)).all(axis=1).any()


def test_glb_depth_step_cut_and_slope_kept():
    height, width = 4, 8
    step = np.where(np.arange(width) < 4, 1.0, 3.0)[None, :].repeat(height, 0).astype(np.float32)
    loaded = load_glb(glb_bytes(step, scene_rgb(height, width), output=METRIC, focal_px=6.0))
    assert len(loaded.vertices) == 32
    assert len(loaded.faces) == 2 * 3 * 7 - 2 * 3  # the column of quads across the step is gone
    assert np.ptp(loaded.vertices[loaded.faces][..., 2], axis=1).max() == 0.0  # no triangle joins 1 m to 3 m
    # A smooth slope, z growing 6% per pixel (under EDGE_DEPTH_RATIO), keeps every triangle.
    slope = (1.06 ** np.arange(width))[None, :].repeat(height, 0).astype(np.float32)
    assert 1.06 < EDGE_DEPTH_RATIO < 3.0
    loaded = load_glb(glb_bytes(slope, scene_rgb(height, width), output=METRIC, focal_px=6.0))
    assert len(loaded.vertices) == 32 and len(loaded.faces) == 2 * 3 * 7
    # The same for MiDaS' relative depth: a step in inverse depth between 1 and 10 normalised units is cut.
    loaded = load_glb(glb_bytes(1.0 / step, scene_rgb(height, width), output=RELATIVE, focal_px=6.0))
    assert len(loaded.faces) == 2 * 3 * 7 - 2 * 3
    np.testing.assert_allclose(sorted(set(-loaded.vertices[:, 2].round(5))), [1.0, 10.0])


def test_mesh_downsampled():
    height, width = 7, 10
    depth = np.linspace(2.0, 2.2, height * width, dtype=np.float32).reshape(height, width)  # under 10% per stride
    small = mesh(depth, scene_rgb(height, width), output=METRIC, focal_px=8.0, max_side=4)
    # stride ceil(10 / 4) = 3: rows 0, 3, 6 and columns 0, 3, 6, 9, each at its own pixel's depth and centre.
    assert len(small.vertices) == 12 and len(small.faces) == 2 * 2 * 3
    assert small.vertices.dtype == np.float64  # trimesh stores float64; the values are float32-exact
    np.testing.assert_array_equal(small.vertices, small.vertices.astype(np.float32))
    np.testing.assert_allclose(small.vertices[-1], pinhole(9, 6, depth[6, 9], (height, width), 8.0), rtol=1e-6)
    np.testing.assert_allclose(small.visual.uv[-1], [9.5 / width, 1.0 - 6.5 / height], rtol=1e-6)
    assert small.visual.material.baseColorTexture.size == (width, height)  # the texture stays full size
    full = mesh(depth, scene_rgb(height, width), output=METRIC, focal_px=8.0, max_side=10)
    assert len(full.vertices) == 70 and len(full.faces) == 2 * 6 * 9


def test_nothing_to_write():
    # No finite depth, or no quad (a single row): still valid files, with nothing in them.
    rgb = scene_rgb(1, 5)
    data = ply_bytes(np.full((1, 5), np.nan), rgb, output=METRIC, focal_px=3.0)
    assert b"element vertex 0\n" in data and len(trimesh.load(io.BytesIO(data), file_type="ply").geometry) == 0
    assert len(mesh(np.ones((1, 5)), rgb, output=METRIC, focal_px=3.0).faces) == 0
    scene = trimesh.load(io.BytesIO(glb_bytes(np.ones((1, 5)), rgb, output=METRIC, focal_px=3.0)), file_type="glb")
    assert len(scene.geometry) == 0


@pytest.mark.parametrize("focal_35mm", [5e-324, 0.001, 1e9, 1e308])
def test_absurd_exif_focal_lengths_fall_back_to_the_default_field_of_view(tmp_path, focal_35mm):
    """EXIF is input: a focal length giving a field of view outside EXIF_FOV_RANGE_DEG (a 180 deg or 0 deg lens,
    non-finite pixels) is ignored, and the description says so; the 3D files stay finite."""
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0xA405] = focal_35mm  # FocalLengthIn35mmFilm
    photo = tmp_path / "photo.jpg"
    Image.fromarray(np.zeros((40, 60, 3), np.uint8)).save(photo, exif=exif.tobytes())
    focal, where = camera_focal(photo, 60, None)
    assert focal == pytest.approx(focal_from_fov(DEFAULT_FOV_DEG, 60))
    assert where.startswith(f"fov {DEFAULT_FOV_DEG:g} deg (default; ignored EXIF") and "field of view" in where
    depth = np.linspace(1, 2, 40 * 60, dtype=np.float32).reshape(40, 60)
    cloud = point_cloud(depth, np.zeros((40, 60, 3), np.uint8), output=MetricDepth(10.0), focal_px=focal)
    assert np.isfinite(cloud.vertices).all()
    sane = tmp_path / "sane.jpg"
    exif.get_ifd(0x8769)[0xA405] = 28
    Image.fromarray(np.zeros((40, 60, 3), np.uint8)).save(sane, exif=exif.tobytes())
    assert camera_focal(sane, 60, None)[1] == "EXIF 28 mm (35 mm equiv.)"
