"""pipeline.py: `predict` equals MiDaS run.py's pipeline in torch, batching changes nothing and compiles once per
shape, leftovers are not padded on CPU (bucketed elsewhere), the compiled programs kept are bounded (and their memory
released), failed batches are reported, parameters are placed on the devices once, `ordered_map` keeps order and
bounds."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import jax
import numpy as np
import pytest
from predict_helpers import TINY_NET, scene, tiny_files, torch_run_py, write_images

import beit_flax
from beit_flax import pipeline
from beit_flax.batcher import Batcher, batch_plan
from beit_flax.images import read_image
from beit_flax.pipeline import ordered_map

BATCH = 2  # every test uses it, so each input shape compiles once for the whole session
TOLERANCE = 1e-3  # max|ours - torch| / max|torch|; we measure ~1e-6 (float32 vs float64 resizing, XLA vs torch)


def relative_error(ours: np.ndarray, theirs: np.ndarray) -> float:
    return float(np.abs(ours - theirs).max() / np.abs(theirs).max())


@pytest.fixture(scope="module")
def tiny():
    path, sd_midas = tiny_files()
    model, params = beit_flax.load(path)
    return model, params, sd_midas


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return write_images(tmp_path_factory.mktemp("images"))


def test_predict_matches_torch_run_py(tiny, images):
    model, params, sd_midas = tiny
    names = sorted(images)
    arrays = [read_image(images[name][0]) for name in names]
    depths = beit_flax.predict(model, params, arrays, batch_size=BATCH)
    worst = 0.0
    for name, image, depth in zip(names, arrays, depths):
        path, size = images[name]
        assert image.shape[:2] == size and depth.shape == size and depth.dtype == np.float32, name
        expected = torch_run_py(path, sd_midas)
        # relative to the map's range, or to 0.1 (the tiny model's typical scale) where the map is nearly flat:
        # the 1x1 image's single value can be the ReLU's 0
        err = float(np.abs(depth - expected).max() / max(np.abs(expected).max(), 0.1))
        print(f"[run.py] {name} {size}: rel err {err:.2e}")
        assert err <= TOLERANCE, name
        worst = max(worst, err)
    print(f"[run.py] worst over {len(names)} images: {worst:.2e}")


def test_predict_matches_opencv_run_py(tiny, images):
    """run.py to the letter where OpenCV is installed: cv2.imread, cv2.resize INTER_CUBIC on img / 255.0."""
    cv2 = pytest.importorskip("cv2")
    import torch
    import torch.nn.functional as F
    import torch_reference as ref
    from predict_helpers import midas_size

    model, params, sd_midas = tiny
    for name, (path, size) in sorted(images.items()):
        if name in ("gray16", "palette"):  # cv2 cuts 16-bit to 8 (we keep 16, documented); some builds lack GIF
            continue
        bgr = cv2.imread(str(path))
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB) / 255.0
        x = cv2.resize(rgb, midas_size(*size, TINY_NET)[::-1], interpolation=cv2.INTER_CUBIC)
        x = torch.from_numpy(((x - 0.5) / 0.5).transpose(2, 0, 1).astype(np.float32))[None]
        network_output = ref.midas_forward(sd_midas, ref.TINY, x)
        ref.assert_nondegenerate(network_output)
        expected = (
            F.interpolate(network_output.unsqueeze(1), size=size, mode="bicubic", align_corners=False)
            .numpy()
            .reshape(size)
        )
        depth = beit_flax.predict(model, params, [read_image(path)], batch_size=BATCH)[0]
        err = float(np.abs(depth - expected).max() / max(np.abs(expected).max(), 0.1))
        print(f"[run.py cv2] {name} {size}: rel err {err:.2e}")
        assert err <= TOLERANCE, name


def test_square_and_size_options(tiny, images):
    model, params, sd_midas = tiny
    path, size = images["landscape"]
    image = read_image(path)
    square = beit_flax.predict(model, params, [image], batch_size=BATCH, square=True)[0]  # (64, 64) input
    assert square.shape == size
    assert relative_error(square, torch_run_py(path, sd_midas, square=True)) <= TOLERANCE
    other = beit_flax.predict(model, params, [image], batch_size=BATCH, net_size=96, square=True)[0]
    assert relative_error(other, torch_run_py(path, sd_midas, net=96, square=True)) <= TOLERANCE


def test_batching_changes_nothing_and_compiles_once_per_shape(tiny):
    model, params, _ = tiny
    frames = [scene(61, 97, seed) for seed in range(3)] + [scene(120, 45, 3)]  # shapes (64, 96) x3, (160, 64)
    batcher = Batcher(model, params, BATCH, programs=4)
    inputs = [(i, beit_flax.preprocess(f, TINY_NET)) for i, f in enumerate(frames)]
    together = dict(batcher.run(inputs))  # a full batch of 2, then the leftovers: 1 of each shape, unpadded (CPU)
    assert batcher.shapes == {(BATCH, 64, 96, 3), (1, 64, 96, 3), (1, 160, 64, 3)}
    assert batcher.input_shapes == {(64, 96), (160, 64)} and batcher.apply.compiled == 3
    alone = [dict(batcher.run([item]))[item[0]] for item in inputs]
    assert batcher.apply.compiled == 3  # the same programs served every call
    for i, depth in enumerate(alone):  # batch 2 and batch 1 are different programs: float32 rounding apart
        np.testing.assert_allclose(together[i], depth, rtol=0, atol=1e-5 * np.abs(depth).max())
    assert sorted(together) == [0, 1, 2, 3]
    predicted = beit_flax.predict(model, params, frames, batch_size=BATCH)
    for i, depth in enumerate(predicted):
        assert depth.shape == frames[i].shape[:2]


def test_batch_plan_pads_no_leftover_on_cpu_and_buckets_elsewhere():
    """CPU: every leftover runs at its own size, on the most devices that split it evenly. GPU / TPU: leftovers in
    powers of two (times the device count) up to the batch, so a shape compiles a few programs at most."""
    assert batch_plan(1, 1, "cpu") == ((1, 1),)
    assert batch_plan(8, 1, "cpu") == tuple((k, 1) for k in range(1, 9))
    assert batch_plan(8, 8, "cpu")[:4] == ((1, 1), (2, 2), (3, 3), (4, 4)) and batch_plan(8, 8, "cpu")[-1] == (8, 8)
    assert batch_plan(16, 8, "cpu")[10:12] == ((11, 1), (12, 6))
    assert batch_plan(8, 1, "gpu") == ((1, 1), (2, 1), (4, 1), (8, 1))
    assert batch_plan(12, 1, "tpu") == ((1, 1), (2, 1), (4, 1), (8, 1), (12, 1))
    assert batch_plan(32, 4, "gpu") == ((4, 4), (8, 4), (16, 4), (32, 4))
    assert batch_plan(4, 4, "gpu") == ((4, 4),)


def test_programs_kept_are_bounded_and_their_memory_released(tiny):
    """A stream of many input shapes keeps at most `programs` compiled programs alive (each holds host memory of
    its own: ~20-30 MB per BEiT-B program on CPU) - XLA's live executables say so, not only our dict - and a shape
    that comes back compiles again and gives the same result."""
    import gc

    model, params, _ = tiny
    client = jax.devices()[0].client
    batcher = Batcher(model, params, 1, programs=2)
    frames = [scene(64, 64 + 32 * k, k) for k in range(6)]  # 6 network input shapes
    first = dict(batcher.run([(0, beit_flax.preprocess(frames[0], TINY_NET))]))[0]
    gc.collect()
    live = len(client.live_executables())
    for k, frame in enumerate(frames[1:], 1):
        list(batcher.run([(k, beit_flax.preprocess(frame, TINY_NET))]))
        gc.collect()
        assert len(batcher.apply.programs) <= 2
        assert len(client.live_executables()) <= live + 1, f"after {k + 1} shapes"
    again = dict(batcher.run([(0, beit_flax.preprocess(frames[0], TINY_NET))]))[0]
    assert batcher.apply.compiled == 7  # 6 shapes, the first one twice
    np.testing.assert_array_equal(again, first)
    with pytest.raises(ValueError, match="programs kept must be a positive int"):
        Batcher(model, params, 1, programs=0)


def test_batcher_reports_failed_batches_and_goes_on(tiny):
    model, params, _ = tiny
    batcher = Batcher(model, params, BATCH)
    real = batcher.apply

    def flaky(params, batch):
        if batch.shape[1] == 160:
            raise RuntimeError("RESOURCE_EXHAUSTED: out of memory")
        return real(params, batch)

    batcher.apply = flaky
    items = [(i, beit_flax.preprocess(scene(*size, i), TINY_NET)) for i, size in enumerate([(61, 97), (120, 45)] * 2)]
    failed = []
    done = [key for key, _ in batcher.run(items, on_error=lambda keys, err: failed.append((keys, str(err))))]
    assert done == [0, 2] and failed == [([1, 3], "RESOURCE_EXHAUSTED: out of memory")]
    with pytest.raises(RuntimeError, match="RESOURCE_EXHAUSTED"):
        list(batcher.run(items))


def test_predict_accepts_a_batch_array_and_empty_list(tiny):
    model, params, _ = tiny
    batch = np.stack([scene(61, 97, 0), scene(61, 97, 1)])
    out = beit_flax.predict(model, params, batch, batch_size=BATCH)
    assert [d.shape for d in out] == [(61, 97)] * 2
    assert beit_flax.predict(model, params, [], batch_size=BATCH) == []


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (np.zeros((10, 12, 3), np.uint8), r"got one array of shape \(10, 12, 3\)"),
        ([np.zeros((10, 12), np.uint8)], r"images\[0\] must be an \(H, W, 3\) RGB array .* shape \(10, 12\)"),
        ([np.zeros((8, 8, 3), np.uint8), np.zeros((10, 12, 4), np.uint8)], r"images\[1\] .* shape \(10, 12, 4\)"),
        ([np.zeros((0, 12, 3), np.uint8)], r"shape \(0, 12, 3\)"),
        ([np.zeros((8, 8, 3), np.int64)], r"dtype int64 \(shape \(8, 8, 3\)\)"),
        # the (B, H, W, 3) array form follows the list form's rules
        (np.zeros((2, 8, 8, 3), np.int32), r"images\[0\] .* dtype int32"),
        (np.zeros((1, 8, 8, 3), bool), r"images\[0\] .* dtype bool"),
        (np.zeros((1, 8, 8, 3), np.complex64), r"images\[0\] .* dtype complex64"),
        # floats are [0, 1]; anything else (0..255 floats, NaN) is refused rather than clipped
        ([np.full((8, 8, 3), 0.5), np.full((8, 8, 3), 255.0)], r"images\[1\] is float with values in \[255, 255\]"),
        (np.full((1, 8, 8, 3), np.nan, np.float32), r"values in \[nan, nan\]"),
        ("photo.jpg", "list of"),
    ],
)
def test_predict_rejects_bad_input(tiny, images, message):
    model, params, _ = tiny
    with pytest.raises(ValueError, match=message):
        beit_flax.predict(model, params, images)


def test_predict_rejects_bad_options(tiny):
    model, params, _ = tiny
    image = [np.zeros((8, 8, 3), np.uint8)]
    with pytest.raises(ValueError, match="batch_size must be a positive int, got 0"):
        beit_flax.predict(model, params, image, batch_size=0)
    with pytest.raises(ValueError, match="net size must be an int >= 32, got 16"):
        beit_flax.predict(model, params, image, net_size=16)
    with pytest.raises(ValueError, match="model must be a beit_flax model"):
        beit_flax.predict(object(), params, image)


# --- decoding -------------------------------------------------------------------------------------------------------


def test_predict_places_the_parameters_once(tiny, monkeypatch):
    """A second `predict` with the same parameters reuses their device copy (BEiT-L: 1.4 GB per call otherwise);
    other parameters, or a replaced leaf, are placed anew and give their own result."""
    model, params, _ = tiny
    pipeline.clear_device_params()
    built = []
    real_init = Batcher.__init__

    def counting_init(self, *args, **kwargs):
        built.append(args[1])
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(Batcher, "__init__", counting_init)
    frame = [scene(61, 97, 0)]
    first = beit_flax.predict(model, params, frame, batch_size=BATCH)[0]
    again = beit_flax.predict(model, params, frame, batch_size=BATCH)[0]
    assert len(built) == 1
    np.testing.assert_array_equal(first, again)
    changed = {**params, "head": {**params["head"], "conv3": {**params["head"]["conv3"]}}}
    changed["head"]["conv3"]["bias"] = np.asarray(params["head"]["conv3"]["bias"]) + 1.0
    shifted = beit_flax.predict(model, changed, frame, batch_size=BATCH)[0]
    assert len(built) == 2 and built[1] is changed
    assert not np.allclose(shifted, first)
    pipeline.clear_device_params()
    beit_flax.predict(model, params, frame, batch_size=BATCH)
    assert len(built) == 3


def test_ordered_map_keeps_order_and_bounds_the_backlog():
    """Results in input order although later items finish first, and never more than `limit` submitted ahead."""
    submitted, consumed, lock = [], [], threading.Lock()

    def work(i):
        with lock:
            submitted.append(i)
        time.sleep(0.02 * (5 - i % 5))  # later items of each group of 5 finish sooner
        return i

    with ThreadPoolExecutor(4) as pool:
        for result in ordered_map(work, range(20), pool, limit=3):
            consumed.append(result)
            with lock:
                assert len(submitted) - len(consumed) <= 3
    assert consumed == list(range(20))
