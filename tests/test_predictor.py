"""beit_flax.predictor: `Predictor.depth` is the library's `predict` (MiDaS) on the same weights, and its errors are
one line naming the cause."""

from __future__ import annotations

import numpy as np
import pytest
from predict_helpers import scene, tiny_files

import beit_flax
from beit_flax.models.depth_output import RelativeInverseDepth
from beit_flax.predictor import Predictor


@pytest.fixture(scope="module")
def weights():
    return tiny_files()[0]


@pytest.fixture(autouse=True)
def no_persistent_cache(monkeypatch):
    monkeypatch.setenv("BEIT_FLAX_CACHE_DIR", "off")


def test_depth_is_the_library_predict(weights):
    images = [scene(40, 70, 1), scene(64, 48, 2)]
    predictor = Predictor(weights)
    model, params = beit_flax.load(weights)
    expected = beit_flax.predict(model, params, images)
    assert predictor.output == RelativeInverseDepth() and predictor.family.name == "dpt"
    for image, want in zip(images, expected):
        got = predictor.depth(image)
        assert got.shape == image.shape[:2] and got.dtype == np.float32 and np.ptp(got) > 0
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6 * np.abs(want).max())


def test_run_streams_in_input_order_per_shape(weights):
    predictor = Predictor(weights, batch_size=2)
    images = [scene(40, 70, seed) for seed in range(5)]
    prepared = ((i, image.shape[:2], predictor.inputs(image, i)) for i, image in enumerate(images))
    results = list(predictor.run(prepared))
    assert [i for i, _, _ in results] == list(range(5))
    for (_, size_hw, parts), image in zip(results, images):
        assert size_hw == image.shape[:2]
        np.testing.assert_array_equal(predictor.finish(size_hw, parts), predictor.depth(image))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"pad": False}, "has no test-time padding or flip"),
        ({"flip": False}, "has no test-time padding or flip"),
        ({"devices": 64}, "--devices 64"),
        ({"size": 10**6}, "over"),
    ],
)
def test_bad_options_are_one_line(weights, kwargs, message):
    with pytest.raises(ValueError, match=message) as info:
        Predictor(weights, **kwargs)
    assert "\n" not in str(info.value)


def test_unreadable_weights_say_so(tmp_path):
    bad = tmp_path / "bad.msgpack"
    bad.write_bytes(b"not msgpack")
    with pytest.raises(ValueError, match=r"^cannot load weights: "):
        Predictor(bad)
