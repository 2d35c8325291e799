"""`beit-depth predict --runtime onnxruntime | openvino` (`beit_flax.runtimes`): the same depth maps as `--runtime
jax` for every family (tiny configs, perturbed weights: `init_params(spread=0.1)`), the ONNX artifact exported once
per network input size and kept in the weights cache (bounded), and the refusals.

Difference: max |runtime - jax| / max |jax| per map, at most 1e-5 (measured 3e-7 - 1.2e-6).
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from PIL import Image
from tiny_config import TINY

import beit_flax
from beit_flax import runtimes
from beit_flax.cli import main
from beit_flax.models.depth_anything import TINY as DA_TINY
from beit_flax.models.zoedepth.config import TINY as ZOE_TINY
from beit_flax.params import init_params
from beit_flax.predictor import Predictor

TOLERANCE = 1e-5


def relative(out: np.ndarray, ref: np.ndarray) -> float:
    assert out.shape == ref.shape and out.dtype == np.float32
    assert np.abs(ref).max() > 1e-3  # a map worth comparing
    return float(np.abs(out - ref).max() / np.abs(ref).max())


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("BEIT_FLAX_WEIGHTS_DIR", str(folder))
    return folder / "onnx"


def weights_file(folder, config, seed: int = 0):
    path = folder / f"{type(config).__name__}-{seed}.msgpack"
    beit_flax.save(path, config, init_params(config, seed=seed, spread=0.1))
    return path


def image(height: int, width: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_predict_runtimes_give_the_jax_maps(tmp_path, cache, capsys):
    """Three images, two network input sizes: two artifacts, exported on the first run only."""
    weights = weights_file(tmp_path, TINY)
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name, (h, w), seed in (("a", (32, 96), 0), ("b", (96, 32), 1), ("c", (32, 96), 2)):
        Image.fromarray(image(h, w, seed)).save(inputs / f"{name}.png")
    maps = {}
    for runtime in runtimes.RUNTIMES:
        out = tmp_path / runtime
        assert main(["predict", str(inputs), "--weights", str(weights), "--out", str(out), "--runtime", runtime]) == 0
        captured = capsys.readouterr()
        assert "3 images" in captured.out and "2 input shapes" in captured.out and "0 failed" in captured.out
        if runtime != "jax":
            assert f"in {runtime} on the CPU" in captured.out
            # the first ONNX runtime exports both sizes; the second finds them in the cache
            assert captured.err.count("exporting the model to ONNX") == (2 if runtime == "onnxruntime" else 0)
        maps[runtime] = {name: np.load(out / f"{name}.npy") for name in "abc"}
    for runtime in runtimes.RUNTIMES[1:]:
        for name in "abc":
            assert relative(maps[runtime][name], maps["jax"][name]) <= TOLERANCE, (runtime, name)
    assert len(list(cache.glob("*.onnx"))) == 2


@pytest.mark.parametrize("config", [DA_TINY, ZOE_TINY], ids=["depth_anything", "zoedepth"])
def test_other_families(tmp_path, cache, config):
    """The runtimes know no family: Depth Anything, and ZoeDepth's padded, flipped views (its own processing)."""
    weights = weights_file(tmp_path, config)
    picture = image(50, 70, 3)
    ref = Predictor(weights).depth(picture)
    for runtime in runtimes.RUNTIMES[1:]:
        assert relative(Predictor(weights, runtime=runtime).depth(picture), ref) <= TOLERANCE, runtime


def test_openvino_bfloat16(tmp_path, cache):
    """--runtime openvino --dtype bfloat16: the float32 artifact (the one float32 runs use) inferred in bfloat16
    where the CPU has it. Against the float32 JAX map it is as far as JAX's own bfloat16 model is (measured here,
    AVX-512 BF16: 6e-3 vs JAX bf16's 9e-3); a bound that catches a broken path, not bfloat16 rounding."""
    weights = weights_file(tmp_path, TINY)
    picture = image(50, 70, 4)
    ref = Predictor(weights).depth(picture)
    jax_bf16 = relative(Predictor(weights, dtype="bfloat16").depth(picture), ref)
    predictor = Predictor(weights, runtime="openvino", dtype="bfloat16")
    assert relative(predictor.depth(picture), ref) <= max(0.05, 2 * jax_bf16)
    assert "in openvino (bfloat16) on the CPU" in predictor.describe()
    assert len(list(cache.glob("*.onnx"))) == 1  # the float32 artifact


def test_artifacts_are_keyed_and_bounded(tmp_path, cache, monkeypatch):
    model, params = beit_flax.load(weights_file(tmp_path, TINY))
    monkeypatch.setattr(runtimes, "KEPT_ARTIFACTS", 2)
    first = runtimes.artifact(model, params, (32, 32))
    assert runtimes.artifact(model, params, (32, 32)) == first  # found, not exported again
    other = runtimes.artifact(model, params, (32, 48))  # another size
    changed = jax.tree.map(lambda a: np.asarray(a) + np.float32(1e-3), params)
    third = runtimes.artifact(model, changed, (32, 48))  # other weights: another artifact
    assert len({first, other, third}) == 3
    assert sorted(cache.glob("*.onnx")) == sorted([other, third])  # the least recently used went


def test_refusals(tmp_path, cache, capsys):
    weights = weights_file(tmp_path, TINY)
    picture = tmp_path / "a.png"
    Image.fromarray(image(48, 64, 0)).save(picture)
    base = ["predict", str(picture), "--weights", str(weights), "--out", str(tmp_path / "out")]
    for extra, message in (
        (["--runtime", "onnxruntime", "--dtype", "bfloat16"], "--runtime onnxruntime computes in float32 only"),
        (["--runtime", "openvino", "--dtype", "float16"], "--runtime openvino computes in float32 or bfloat16 only"),
        (["--runtime", "onnxruntime", "--devices", "1"], "--devices is for --runtime jax"),
    ):
        assert main([*base, *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    with pytest.raises(SystemExit):
        main([*base, "--runtime", "tensorrt"])
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    assert not cache.exists() or not any(cache.glob("*.onnx"))
