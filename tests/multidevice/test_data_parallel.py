"""8 devices (forced CPU devices, see conftest.py): sharded predict equals one device, for batches that do not
fill the devices evenly (leftovers run unpadded on fewer devices); params replicated - one host copy shared by all
the devices -, batches split; the CLI writes the same files on 8 devices and on 1.

Every image here has network input (64, 96), so the module compiles a few programs (8 devices x batch 8, leftovers
on 2 or 3 devices, 1 device x batch 1): compiling dominates its run time."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec
from PIL import Image
from sharding_helpers import picture, tiny_weights

import beit_flax
from beit_flax.batcher import Batcher, jitted_apply
from beit_flax.cli import main

DEVICES = 8
if jax.local_device_count() < DEVICES:
    pytest.skip(f"needs {DEVICES} local devices, found {jax.local_device_count()}", allow_module_level=True)

TOLERANCE = 1e-5  # max|sharded - one device| / max|one device|
SIZES = [(61, 97), (60, 90), (64, 100), (70, 110)]  # all -> (64, 96) at net 64
IMAGES = [picture(*SIZES[seed % 4], seed) for seed in range(11)]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tiny_weights(tmp_path_factory.mktemp("weights") / "tiny.msgpack")
    model, params = beit_flax.load(path)
    return path, model, params


def relative_error(ours: np.ndarray, theirs: np.ndarray) -> float:
    return float(np.abs(ours - theirs).max() / np.abs(theirs).max())


@pytest.mark.parametrize("count", [3, 11])  # a leftover of 3 (on 3 devices); a full batch of 8 and a leftover
def test_sharded_predict_equals_one_device(tiny, count):
    _, model, params = tiny
    images = IMAGES[:count]
    one = beit_flax.predict(model, params, images, devices=1)
    many = beit_flax.predict(model, params, images)  # every local device: batch 8, one image per device
    odd = beit_flax.predict(model, params, images, batch_size=3)  # global, rounded up to 8
    worst = 0.0
    for image, a, b, c in zip(images, many, one, odd):
        assert a.shape == b.shape == c.shape == image.shape[:2] and a.dtype == np.float32
        assert np.ptp(b) > 0.01 * np.abs(b).max()  # a real map, not a constant
        worst = max(worst, relative_error(a, b), relative_error(c, b))
    print(f"[{count} images, {DEVICES} devices vs 1] max rel err {worst:.1e}")
    assert worst <= TOLERANCE


def test_batch_size_is_global_and_params_replicated(tiny):
    _, model, params = tiny
    assert jitted_apply(model.config) is jitted_apply(model.config, DEVICES)  # one program cache per mesh
    assert Batcher(model, params).batch_size == DEVICES  # 1 per CPU device
    assert Batcher(model, params, 3).batch_size == 8 and Batcher(model, params, 11).batch_size == 16
    assert Batcher(model, params, 3, devices=2).batch_size == 4 and Batcher(model, params, devices=1).batch_size == 1
    chosen = jax.local_devices()[5:8]
    subset = Batcher(model, params, 4, devices=chosen)
    assert subset.batch_size == 6 and list(subset.mesh.devices.flat) == chosen
    with pytest.raises(ValueError, match="devices must be between 1 and the 8 local cpu devices, got 9"):
        Batcher(model, params, devices=9)
    with pytest.raises(ValueError, match="lists a device twice"):
        Batcher(model, params, devices=[chosen[0], chosen[0]])

    batcher = Batcher(model, params)
    for leaf in jax.tree.leaves(batcher.params):
        assert leaf.sharding.is_fully_replicated and len(leaf.sharding.device_set) == DEVICES
        # host devices share one copy of each parameter (8 copies of BEiT-B's took 3.3 GB)
        assert len({shard.data.unsafe_buffer_pointer() for shard in leaf.addressable_shards}) == 1
    out = batcher.apply(batcher.params, jax.device_put(np.zeros((8, 64, 96, 3), np.float32), batcher.batch_sharding))
    assert out.shape == (8, 64, 96) and out.sharding.spec == PartitionSpec("batch")
    assert len(out.sharding.device_set) == DEVICES
    assert [shard.data.shape for shard in out.addressable_shards] == [(1, 64, 96)] * DEVICES
    keys = [key for key, _ in batcher.run((i, beit_flax.preprocess(image, 64)) for i, image in enumerate(IMAGES))]
    # a full batch on 8 devices, then the leftover 3 unpadded on 3 of them (CPU), their params the same buffers
    assert keys == list(range(11)) and batcher.shapes == {(8, 64, 96, 3), (3, 64, 96, 3)}
    subset_params, subset_sharding = batcher._placement(3)
    assert len(subset_sharding.device_set) == 3
    pointer = lambda leaf: leaf.addressable_shards[0].data.unsafe_buffer_pointer()
    for leaf, full in zip(jax.tree.leaves(subset_params), jax.tree.leaves(batcher.params)):
        assert pointer(leaf) == pointer(full)


def test_cli_same_files_on_8_devices_and_on_1(tiny, tmp_path, capsys):
    path, _, _ = tiny
    for i, image in enumerate(IMAGES[:10]):
        Image.fromarray(image).save(tmp_path / f"in{i}.png")
    common = ["predict", "--weights", str(path), str(tmp_path / "in*.png"), "-q"]
    assert main([*common, "--out", str(tmp_path / "eight")]) == 0
    assert "10 images in" in capsys.readouterr().out
    assert main([*common, "--out", str(tmp_path / "one"), "--devices", "1"]) == 0
    assert "batch 1 on 1 cpu device," in capsys.readouterr().out
    assert main([*common, "--out", str(tmp_path / "odd"), "--batch-size", "5"]) == 0  # rounded up to 8
    assert "batch 8 on 8 cpu devices" in capsys.readouterr().out
    names = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert len(names) == 20
    for folder in ("eight", "odd"):
        assert sorted(p.name for p in (tmp_path / folder).iterdir()) == names
        for name in names:
            ours, theirs = (tmp_path / folder / name).read_bytes(), (tmp_path / "one" / name).read_bytes()
            if name.endswith(".npy") and ours != theirs:  # say how far, should the bits ever differ
                print(name, relative_error(np.load(tmp_path / folder / name), np.load(tmp_path / "one" / name)))
            assert ours == theirs, (folder, name)
    assert main([*common, "--out", str(tmp_path / "x"), "--devices", "9"]) == 2
    assert "--devices 9: devices must be between 1 and the 8 local cpu devices" in capsys.readouterr().err
