"""beit_flax.training.data: the generated scenes, batches, step-indexed sampling and the folder loader (the ray tracer
behind the scenes: tests/test_scenes.py)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from beit_flax.training import data

# --- generated scenes --------------------------------------------------------------------------------------------


def test_scenes_are_deterministic_and_fully_covered():
    scenes = data.synthetic_scenes(3, 32, seed=5)
    assert scenes.images.shape == (3, 32, 32, 3) and scenes.images.dtype == np.uint8
    assert scenes.depth.shape == (3, 32, 32) and scenes.depth.dtype == np.float32
    assert scenes.mask.all() and np.all(scenes.depth > 0.5) and len(scenes) == 3
    again = data.synthetic_scenes(2, 32, seed=5)  # scene i depends on (seed, i) only
    np.testing.assert_array_equal(again.images, scenes.images[:2])
    np.testing.assert_array_equal(again.depth, scenes.depth[:2])
    assert not np.array_equal(data.synthetic_scenes(1, 32, seed=6).depth[0], scenes.depth[0])
    assert scenes.images.std() > 10  # textured, not flat


# --- batches -----------------------------------------------------------------------------------------------------


def test_make_batch_normalises_and_masks():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    depth = rng.uniform(1, 10, (2, 16, 16)).astype(np.float32)
    depth[0, 0, :4] = [0.0, -1.0, np.inf, np.nan]
    mask = np.ones((2, 16, 16), bool)
    mask[1, 5, 5] = False
    batch = data.make_batch(images, depth, mask)
    np.testing.assert_allclose(batch["image"], (images / 255.0 - 0.5) / 0.5, atol=1e-6)
    assert not batch["mask"][0, 0, :4].any() and not batch["mask"][1, 5, 5] and batch["mask"].sum() == 2 * 256 - 5
    assert np.all(batch["inverse_depth"][~batch["mask"]] == 0)
    for b in range(2):  # inverse depth, scaled to median 1 per image
        valid = batch["mask"][b]
        expected = 1 / depth[b][valid].astype(np.float64)
        np.testing.assert_allclose(batch["inverse_depth"][b][valid], expected / np.median(expected), rtol=1e-6)
    units = data.make_batch(images, depth * 1000, mask)  # depth units do not matter
    np.testing.assert_allclose(units["inverse_depth"], batch["inverse_depth"], rtol=1e-6)
    with pytest.raises(ValueError, match="uint8"):
        data.make_batch(images.astype(np.float32), depth, mask)
    with pytest.raises(ValueError, match="must be"):
        data.make_batch(images, depth[:, :8], mask)


def test_batch_indices_are_a_pure_function_of_the_step():
    seen = np.concatenate([data.batch_indices(10, 4, step, seed=3) for step in range(5)])  # 2 epochs
    assert sorted(seen[:10]) == list(range(10)) and sorted(seen[10:20]) == list(range(10))
    np.testing.assert_array_equal(data.batch_indices(10, 4, 3, seed=3), seen[12:16])  # no history needed
    assert not np.array_equal(data.batch_indices(10, 4, 0, seed=4), seen[:4])
    with pytest.raises(ValueError):
        data.batch_indices(0, 4, 0)


# --- user folders ------------------------------------------------------------------------------------------------


@pytest.fixture
def folder(tmp_path):
    """3 samples: 16-bit PNG depth in mm with holes; .npy depth in m; one with a mask; one 48x64 (non-square)."""
    rng = np.random.default_rng(0)
    for name in ("images", "depth", "masks"):
        (tmp_path / name).mkdir()
    depth_m = {"a": rng.uniform(1, 5, (32, 32)), "b": rng.uniform(1, 5, (48, 64)), "c": rng.uniform(1, 5, (32, 32))}
    for name, d in depth_m.items():
        Image.fromarray(rng.integers(0, 256, (*d.shape, 3), dtype=np.uint8)).save(tmp_path / "images" / f"{name}.png")
    mm = (depth_m["a"] * 1000).astype(np.uint16)
    mm[:4, :4] = 0  # no measurement
    Image.fromarray(mm).save(tmp_path / "depth" / "a.png")
    np.save(tmp_path / "depth" / "b.npy", depth_m["b"].astype(np.float32))
    np.save(tmp_path / "depth" / "c.npy", depth_m["c"].astype(np.float32))
    mask = np.full((32, 32), 255, np.uint8)
    mask[-8:] = 0
    Image.fromarray(mask).save(tmp_path / "masks" / "c.png")
    return tmp_path, depth_m


def test_depth_folder_reads_pngs_npys_and_masks(folder):
    root, depth_m = folder
    dataset = data.DepthFolder(root, size=32)
    assert len(dataset) == 3 and [item[0].stem for item in dataset.items] == ["a", "b", "c"]
    image, depth, valid = dataset.sample(0)
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8
    assert not valid[:4, :4].any() and valid.sum() == 32 * 32 - 16
    np.testing.assert_allclose(depth[valid], (depth_m["a"] * 1000).astype(np.uint16)[valid], rtol=1e-6)
    _, depth_b, valid_b = dataset.sample(1)  # 48x64 -> shorter side 32 (32x43) -> centre crop 32x32
    assert depth_b.shape == (32, 32) and valid_b.all()
    assert set(np.unique(depth_b)) <= set(np.unique(depth_m["b"].astype(np.float32)))  # nearest: no blending
    _, _, valid_c = dataset.sample(2)
    assert not valid_c[-8:].any() and valid_c[:-8].all()
    batch = dataset.batch([2, 0])
    assert batch["image"].shape == (2, 32, 32, 3) and batch["mask"].sum() == valid_c.sum() + valid.sum()
    arrays = dataset.to_arrays()
    np.testing.assert_array_equal(arrays.batch([2, 0])["inverse_depth"], batch["inverse_depth"])


def test_depth_folder_inverse_option_and_errors(folder):
    root, _ = folder
    plain, inverse = data.DepthFolder(root, 32).batch([1]), data.DepthFolder(root, 32, inverse=True).batch([1])
    # the same files read as inverse depth: the batch holds their reciprocal up to scale
    product = plain["inverse_depth"][0] * inverse["inverse_depth"][0]
    np.testing.assert_allclose(product / product.mean(), 1, rtol=1e-5)
    with pytest.raises(ValueError, match="multiple of 16"):
        data.DepthFolder(root, 40)
    (root / "images" / "d.png").write_bytes((root / "images" / "a.png").read_bytes())
    with pytest.raises(FileNotFoundError, match=r"no depth map for 1 images, e.g. \['d'\]"):
        data.DepthFolder(root, 32)
    np.save(root / "depth" / "d.npy", np.ones((8, 8), np.float32))
    with pytest.raises(ValueError, match="does not match image"):
        data.DepthFolder(root, 32).sample(3)
    with pytest.raises(FileNotFoundError, match="images/ and depth/"):
        data.DepthFolder(root / "images", 32)
