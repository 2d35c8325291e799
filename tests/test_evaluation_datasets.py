"""Each dataset reader on tiny files written here in the dataset's shipped format: the depth in meters, the valid
pixels and the keys come back as written; bad files are one clear DatasetError naming the file."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.io
from evaluation_helpers import dpt_bytes, nyu_folder, png16, rgb, room
from PIL import Image

from beit_flax.evaluation.datasets import DATASETS, DatasetError, open_dataset


def loaded(name, root, split=None):
    return {item.key: item.load() for item in open_dataset(name, root, split)}


def test_nyu_official_splits(tmp_path):
    truth = nyu_folder(tmp_path)
    samples = loaded("nyu", tmp_path)
    assert sorted(samples) == sorted(truth)
    for key, depth in truth.items():
        s = samples[key]
        assert s.image.shape == (48, 64, 3) and s.image.dtype == np.uint8
        np.testing.assert_allclose(s.depth, depth, rtol=1e-6)  # uint16 millimetres / 1000
        np.testing.assert_array_equal(s.valid, depth > 0)
        assert not s.valid[:8, :12].any() and s.valid.sum() == depth.size - 8 * 12
    # the ROOT may be official_splits/test itself; a BTS file list selects pairs
    assert sorted(loaded("nyu", tmp_path / "official_splits" / "test")) == sorted(truth)
    split = tmp_path / "list.txt"
    split.write_text("kitchen/rgb_00046.jpg kitchen/sync_depth_00046.png 518.8579\n")
    assert list(loaded("nyu", tmp_path, split)) == ["kitchen/rgb_00046"]


def test_nyu_labeled_mat(tmp_path):
    """nyu_depth_v2_labeled.mat as MATLAB v7.3 writes it (HDF5 after a 512-byte header; column-major arrays appear
    transposed: images (N, 3, W, H), depths (N, W, H)) and splits.mat (MATLAB v5, testNdxs 1-based)."""
    import h5py  # in the [eval] and [test] extras

    images, depths = zip(*(room(24, 32, i) for i in range(3)))
    path = tmp_path / "nyu_depth_v2_labeled.mat"
    with h5py.File(path, "w", userblock_size=512) as f:
        f["images"] = np.stack([im.transpose(2, 1, 0) for im in images])  # (H, W, 3) -> (3, W, H)
        f["depths"] = np.stack([d.T for d in depths]).astype(np.float32)
    with open(path, "r+b") as f:
        f.write(b"MATLAB 7.3 MAT-file, written by the test".ljust(116))
    scipy.io.savemat(tmp_path / "splits.mat", {"testNdxs": np.array([[3], [1]]), "trainNdxs": np.array([[2]])})
    samples = loaded("nyu_labeled", tmp_path)
    assert list(samples) == ["labeled/0003", "labeled/0001"]
    np.testing.assert_array_equal(samples["labeled/0003"].image, images[2])
    np.testing.assert_allclose(samples["labeled/0001"].depth, depths[0].astype(np.float32))
    assert samples["labeled/0001"].valid.all()


def kitti_root(tmp_path, shape=(375, 1242)):
    truth = {}
    lines = []
    for n in range(2):
        drive = "2011_09_26_drive_0002_sync"
        image_rel = f"2011_09_26/{drive}/image_02/data/{n:010d}.png"
        depth_rel = f"{drive}/proj_depth/groundtruth/image_02/{n:010d}.png"
        image, depth = room(*shape, n)
        value = np.round(depth * 8 * 256).astype(np.uint16)  # up to ~76 m
        value[np.random.default_rng(n).random(shape) < 0.9] = 0  # sparse LiDAR
        rgb(tmp_path / "raw" / image_rel, image)
        folder = "gts" if n == 0 else "data_depth_annotated/val"  # both layouts of the annotations
        png16(tmp_path / folder / depth_rel, value)
        lines.append(f"{image_rel} {depth_rel} 721.5377")
        truth[image_rel[:-4]] = value / 256.0
    lines.append("2011_09_26/2011_09_26_drive_0002_sync/image_02/data/0000000099.png None 721.5377")
    (tmp_path / "eigen.txt").write_text("\n".join(lines))
    return truth


def test_kitti_eigen_split(tmp_path):
    truth = kitti_root(tmp_path)
    samples = loaded("kitti", tmp_path, tmp_path / "eigen.txt")
    assert list(samples) == list(truth)  # the "None" line skipped, as ZoeDepth skips it
    for key, depth in truth.items():
        np.testing.assert_allclose(samples[key].depth, depth, rtol=1e-6)
        np.testing.assert_array_equal(samples[key].valid, depth > 0)
    with pytest.raises(DatasetError, match="needs --split"):
        open_dataset("kitti", tmp_path)


def test_diode(tmp_path):
    image, depth = room(30, 40, 0)
    mask = np.ones((30, 40), np.float32)
    mask[5:9, 5:9] = 0
    scan = tmp_path / "val" / "indoors" / "scene_00019" / "scan_00183"
    rgb(scan / "00019_00183_indoors_000_010.png", image)
    np.save(scan / "00019_00183_indoors_000_010_depth.npy", depth.astype(np.float32)[..., None])
    np.save(scan / "00019_00183_indoors_000_010_depth_mask.npy", mask)
    samples = loaded("diode_indoor", tmp_path / "val")
    s = samples["scene_00019/scan_00183/00019_00183_indoors_000_010"]
    np.testing.assert_allclose(s.depth, depth.astype(np.float32))
    np.testing.assert_array_equal(s.valid, mask > 0)
    with pytest.raises(DatasetError, match="no DIODE scans"):
        open_dataset("diode_outdoor", tmp_path / "val" / "indoors" / "scene_00019")


def test_eth3d(tmp_path):
    image, depth = room(20, 30, 1)
    depth[2:4, 2:4] = np.inf  # ETH3D: infinity where nothing was measured
    rgb(tmp_path / "courtyard" / "images" / "dslr_images" / "DSC_0286.JPG", image)
    raw = tmp_path / "courtyard" / "ground_truth_depth" / "dslr_images" / "DSC_0286.JPG"
    raw.parent.mkdir(parents=True)
    raw.write_bytes(depth.astype("<f4").tobytes())
    s = loaded("eth3d", tmp_path)["courtyard/images/dslr_images/DSC_0286"]
    np.testing.assert_array_equal(s.valid, np.isfinite(depth))
    np.testing.assert_allclose(s.depth[s.valid], depth[np.isfinite(depth)].astype(np.float32))
    raw.write_bytes(depth.astype("<f4").tobytes()[:-4])
    with pytest.raises(DatasetError, match="not the 20 x 30 float32 map"):
        loaded("eth3d", tmp_path)


def test_sintel(tmp_path):
    image, depth = room(12, 20, 2)
    rgb(tmp_path / "training" / "final" / "alley_1" / "frame_0001.png", image)
    dpt = tmp_path / "training" / "depth" / "alley_1" / "frame_0001.dpt"
    dpt.parent.mkdir(parents=True)
    dpt.write_bytes(dpt_bytes(depth))
    s = loaded("sintel", tmp_path)["training/final/alley_1/frame_0001"]
    np.testing.assert_allclose(s.depth, depth.astype(np.float32))
    dpt.write_bytes(b"XXXX" + dpt_bytes(depth)[4:])
    with pytest.raises(DatasetError, match="no PIEH tag"):
        loaded("sintel", tmp_path)


def test_ibims(tmp_path):
    image, depth = room(16, 24, 3)
    value = np.round(depth / 50 * 65535).astype(np.uint16)
    invalid, transparent = np.full((16, 24), 255, np.uint8), np.full((16, 24), 255, np.uint8)
    invalid[0, :5] = 0
    transparent[3, 3] = 0
    rgb(tmp_path / "rgb" / "corridor_01.png", image)
    png16(tmp_path / "depth" / "corridor_01.png", value)
    for name, mask in (("mask_invalid", invalid), ("mask_transp", transparent)):
        (tmp_path / name).mkdir()
        Image.fromarray(mask).save(tmp_path / name / "corridor_01.png")
    (tmp_path / "imagelist.txt").write_text("corridor_01\n")
    s = loaded("ibims", tmp_path)["rgb/corridor_01"]
    np.testing.assert_allclose(s.depth, (value * 50.0 / 65535).astype(np.float32), rtol=1e-6)
    assert s.valid.sum() == 16 * 24 - 6 and not s.valid[0, :5].any() and not s.valid[3, 3]


def test_bad_inputs_are_one_clear_error(tmp_path):
    nyu_folder(tmp_path)
    depth_png = next(tmp_path.glob("official_splits/test/bathroom/sync_depth_*.png"))
    Image.fromarray(np.zeros((48, 64), np.uint8)).save(depth_png)  # 8-bit: a wrong scale without a word
    items = open_dataset("nyu", tmp_path)
    with pytest.raises(DatasetError, match="not the 16-bit grayscale PNG"):
        items[0].load()
    with pytest.raises(DatasetError, match="no such file"):
        open_dataset("nyu", tmp_path / "missing")
    with pytest.raises(DatasetError, match="unknown dataset"):
        open_dataset("nuy", tmp_path)
    with pytest.raises(DatasetError, match="no NYU test images"):
        open_dataset("nyu", tmp_path / "official_splits" / "test" / "bathroom")
    (tmp_path / "list.txt").write_text("a b\n")
    with pytest.raises(DatasetError, match="one layout"):
        open_dataset("eth3d", tmp_path, tmp_path / "list.txt")  # --split given where none applies
    assert set(DATASETS) == {"nyu", "nyu_labeled", "kitti", "diode_indoor", "diode_outdoor", "ibims", "eth3d", "sintel"}
