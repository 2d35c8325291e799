"""ZoeDepth (models/zoedepth/): config, parameter tree, and the converted model against transformers' ZoeDepth.

The reference is transformers' ZoeDepthForDepthEstimation built from a config (BEiT layer_norm_eps 1e-6), every
parameter perturbed (`beit_flax.demo.zoedepth_torch`), converted from its own hub-layout save. Tolerance:
max|ours - torch| / max|torch| <= 1e-4; tiny models show ~1e-6, the full-size ones 1e-5 to 5e-5: the perturbed metric
head amplifies the core's float32 rounding (transformers' own float32 run is 4e-5 from its float64 run at full size,
ours 2e-5).
"""

from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import traverse_util
from tiny_config import TINY

from beit_flax.convert import open_checkpoint
from beit_flax.demo import zoedepth_torch as zt
from beit_flax.demo.torch_model import assert_nondegenerate, random_images
from beit_flax.models.dpt.dpt import DPT
from beit_flax.models.zoedepth import PRESETS, BinConfig, RouterConfig, ZoeDepth, ZoeDepthConfig, param_shapes
from beit_flax.models.zoedepth.attractors import exp_attractor, inv_attractor
from beit_flax.models.zoedepth.convert.to_flax import to_flax as zoedepth_torch_to_flax
from beit_flax.models.zoedepth.log_binomial import log_binomial_softmax
from beit_flax.models.zoedepth.router import positional_encoding_1d
from beit_flax.params import init_params
from beit_flax.params import param_shapes as dpt_param_shapes

torch.set_num_threads(min(2, os.cpu_count() or 1))

TOLERANCE = 1e-4
TINY_CONFIGS = zt.tiny_configs(TINY)


def relative_error(ours, theirs) -> float:
    return float(np.abs(np.asarray(ours) - np.asarray(theirs)).max() / np.abs(np.asarray(theirs)).max())


def nhwc(images_nchw: torch.Tensor) -> jnp.ndarray:
    return jnp.asarray(images_nchw.permute(0, 2, 3, 1).numpy())


def flax_outputs(config: ZoeDepthConfig, params, images_nchw: torch.Tensor, **knobs):
    model = ZoeDepth(config, **knobs)
    return jax.jit(lambda p, x: model.apply({"params": p}, x, method="outputs"))(params, nhwc(images_nchw))


@pytest.fixture(scope="module", params=sorted(TINY_CONFIGS))
def tiny(request, tmp_path_factory):
    """(name, config, torch reference, converted params) for each tiny variant, converted from a hub-layout save."""
    config = TINY_CONFIGS[request.param]
    model = zt.build_reference(config, seed=0)
    folder = tmp_path_factory.mktemp(f"zoedepth_{request.param}")
    model.save_pretrained(folder)
    converted = zoedepth_torch_to_flax(open_checkpoint(folder))
    assert dataclasses.replace(converted.config, net_size=config.net_size) == config
    return request.param, config, model, converted.params


# ---------------------------------------------------------------------------------------------------------------------
# config and parameter tree
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("config", [*PRESETS.values(), *TINY_CONFIGS.values()], ids=[*PRESETS, *TINY_CONFIGS])
def test_config_dict_round_trip(config):
    fields = config.to_dict()
    assert isinstance(fields["core"], dict) and isinstance(fields["bins"], list)
    assert ZoeDepthConfig.from_dict(fields) == config
    hash(config)  # flax modules hash their attributes
    with pytest.raises(ValueError, match="missing"):
        ZoeDepthConfig.from_dict({k: v for k, v in fields.items() if k != "bins"})


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"bins": ()}, "bins is empty"),
        ({"bins": (BinConfig("nyu"), BinConfig("kitti"))}, "need a router"),
        ({"router": RouterConfig()}, "no router"),
        ({"bins": (BinConfig("nyu", min_depth=2.0, max_depth=1.0),)}, "min_depth"),
        ({"bin_centers_type": "hybrid1"}, "bin_centers_type"),
        ({"attractor_kind": "max"}, "attractor_kind"),
        ({"n_attractors": (16, 8, 4)}, "4 entries"),
        ({"min_temp": 60.0}, "min_temp"),
    ],
)
def test_config_validation(changes, message):
    with pytest.raises(ValueError, match=message):
        PRESETS["zoedepth_n"].replace(**changes)


def test_param_tree():
    for name, config in PRESETS.items():
        shapes = param_shapes(config)
        top = {path.split("/")[0] for path in shapes}
        heads = {"metric"} if config.router is None else {"nyu", "kitti", "router"}
        assert top == {"core", "conv2", "seed_projector", *(f"projector_{k}" for k in range(4)), *heads}, name
        # the core is the DPT's own tree, nothing added or renamed
        core = {path.removeprefix("core/"): s for path, s in shapes.items() if path.startswith("core/")}
        assert core == dpt_param_shapes(config.core), name
    nk = param_shapes(PRESETS["zoedepth_nk"])
    assert nk["nyu/attractor_3/conv2/kernel"] == (1, 1, 128, 16)  # 16 attractors in every NK layer
    assert nk["kitti/conditional_log_binomial/conv1/kernel"] == (1, 1, 160, 40)  # no relative-depth channel
    n = param_shapes(PRESETS["zoedepth_n"])
    assert n["metric/conditional_log_binomial/conv1/kernel"] == (1, 1, 161, 80)
    assert param_shapes(PRESETS["zoedepth_k"])["metric/attractor_0/conv2/kernel"] == (1, 1, 128, 32)  # pairs


def test_dpt_features_are_what_dpt_computes():
    """`DPT.features` (what ZoeDepth taps) returns `DPT.__call__`'s depth and maps of the documented shapes."""
    model = DPT(TINY)
    images = nhwc(random_images(2, 64, 96, seed=1))
    params = init_params(TINY, spread=0.1)
    depth = jax.jit(model.apply)({"params": params}, images)
    taps = jax.jit(lambda p, x: model.apply({"params": p}, x, method="features"))(params, images)
    np.testing.assert_array_equal(taps.depth, depth)
    assert taps.head_activation.shape == (2, 64, 96, TINY.head_channels)
    assert taps.layer4_rn.shape == (2, 2, 3, TINY.fusion_channels)
    assert [f.shape[1:3] for f in taps.fusion] == [(4, 6), (8, 12), (16, 24), (32, 48)]


# ---------------------------------------------------------------------------------------------------------------------
# the torch reference itself
# ---------------------------------------------------------------------------------------------------------------------


def test_every_parameter_perturbed(tiny):
    _, config, model, _ = tiny
    fresh = zt.build_model(config).state_dict()
    for key, value in model.state_dict().items():
        assert not torch.equal(value, fresh[key]), f"{key} still has its init value"
        if value.numel() > 1:
            assert float(value.std()) > 1e-3, f"{key} is (nearly) constant"


def test_unsupported_configs_are_refused():
    with pytest.raises(ValueError, match="seed_mlp_dim"):
        zt.hf_config(TINY_CONFIGS["n"].replace(seed_mlp_dim=64))
    with pytest.raises(ValueError, match="attractor_type"):
        zt.hf_config(TINY_CONFIGS["n"].replace(attractor_type="exp"))


# ---------------------------------------------------------------------------------------------------------------------
# parity
# ---------------------------------------------------------------------------------------------------------------------

CASES = {"n": [(1, 64, 64), (2, 64, 96)], "k": [(1, 96, 32), (2, 64, 64)], "nk": [(1, 64, 64), (1, 96, 64)]}


def test_tiny_matches_transformers(tiny):
    name, config, model, params = tiny
    for batch, height, width in CASES[name]:
        images = random_images(batch, height, width, seed=height + width)
        expected, logits = zt.reference_outputs(model, images)
        assert_nondegenerate(expected)
        out = flax_outputs(config, params, images)
        assert out.metric_depth.shape == (batch, height, width) and out.metric_depth.dtype == np.float32
        error = relative_error(out.metric_depth, expected)
        assert error <= TOLERANCE, f"{name} {batch}x{height}x{width}: {error:.2e}"
        if logits is not None:
            assert relative_error(out.domain_logits, logits) <= TOLERANCE
            assert out.domain.tolist() == torch.softmax(logits.sum(0), -1).argmax(-1, keepdim=True).tolist()
        else:
            assert out.domain_logits is None and out.domain.tolist() == [0] * batch


@pytest.mark.parametrize("tiny", ["nk"], indirect=True)  # two heads only
def test_nk_routes_each_image(tiny):
    """A batch whose images go to different heads: each gets the head (and depth) transformers gives it alone."""
    _name, config, model, params = tiny
    images = torch.cat([random_images(1, 64, 64, seed=s) for s in range(6)])
    out = flax_outputs(config, params, images)
    assert set(out.domain.tolist()) == {0, 1}, "the calibrated router should split these images"
    for i in range(len(images)):
        expected, logits = zt.reference_outputs(model, images[i : i + 1])
        assert int(out.domain[i]) == int(logits.argmax())
        assert relative_error(out.metric_depth[i], expected[0]) <= TOLERANCE
        assert relative_error(out.domain_logits[i], logits[0]) <= TOLERANCE


@pytest.mark.parametrize("tiny", ["k"], indirect=True)  # one variant is enough
def test_execution_knobs_pass_through(tiny):
    _name, config, _, params = tiny
    images = random_images(1, 64, 64, seed=2)
    plain = flax_outputs(config, params, images).metric_depth
    for knobs in ({"scan": True}, {"remat": True}, {"attention": "xla", "query_chunk": None}):
        assert relative_error(flax_outputs(config, params, images, **knobs).metric_depth, plain) <= 1e-6, knobs
    half = flax_outputs(config, params, images, dtype="bfloat16").metric_depth
    assert half.dtype == np.float32 and relative_error(half, plain) <= 5e-2
    with pytest.raises(ValueError, match="dtype"):
        ZoeDepth(config, dtype="int8")


def test_input_checks():
    model = ZoeDepth(TINY_CONFIGS["n"])
    with pytest.raises(ValueError, match="multiples of 32"):
        jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 48, 64, 3), jnp.float32))
    with pytest.raises(ValueError, match="float"):
        jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.uint8))


# ---------------------------------------------------------------------------------------------------------------------
# pieces against the original formulas (what transformers does not cover: the "exp" attraction)
# ---------------------------------------------------------------------------------------------------------------------


def test_attractions_and_log_binomial_formulas():
    dx = np.linspace(-1, 1, 101, dtype=np.float32)
    np.testing.assert_allclose(inv_attractor(dx, 300.0, 2), dx / (1 + 300 * dx**2), rtol=1e-6)
    np.testing.assert_allclose(exp_attractor(dx, 300.0, 2), np.exp(-300 * np.abs(dx) ** 2) * dx, rtol=1e-6, atol=1e-30)
    # log-binomial: a proper distribution peaked near p (n_bins - 1) at low temperature
    p = jnp.asarray([[[0.1, 0.3, 0.9]]], jnp.float32)
    probs = np.asarray(log_binomial_softmax(p, jnp.full_like(p, 0.05), 64))
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-6)
    assert probs[0, 0].argmax(-1).tolist() == [6, 19, 57]
    # positional encoding: transformers' (and the original's) formula
    from transformers.models.zoedepth.modeling_zoedepth import ZoeDepthPatchTransformerEncoder

    # (torch's float32 exp is not correctly rounded: sines of far positions differ by ~1e-5, see the docstring)
    for length, atol in ((37, 1e-5), (800, 1e-4)):
        expected = ZoeDepthPatchTransformerEncoder.positional_encoding_1d(None, 1, length, 128)[0].numpy()
        np.testing.assert_allclose(positional_encoding_1d(length, 128), expected, rtol=0, atol=atol)


# ---------------------------------------------------------------------------------------------------------------------
# full size
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.full_size
@pytest.mark.parametrize("name", ["zoedepth_n", "zoedepth_nk"])
def test_full_size_matches_transformers(name, tmp_path):
    """The released architecture at its net size (one image: 384 x 512), converted from a hub-layout save."""
    config = PRESETS[name]
    model = zt.build_reference(config, seed=0)
    images = random_images(1, *config.net_size, seed=1)
    expected, logits = zt.reference_outputs(model, images)
    assert_nondegenerate(expected)
    model.save_pretrained(tmp_path)
    del model
    converted = zoedepth_torch_to_flax(open_checkpoint(tmp_path))
    assert converted.config == config and converted.model_name == name
    out = flax_outputs(config, converted.params, images)
    error = relative_error(out.metric_depth, expected)
    print(f"{name}: max relative error {error:.2e}")
    assert error <= TOLERANCE
    if logits is not None:
        assert relative_error(out.domain_logits, logits) <= TOLERANCE and int(out.domain[0]) == int(logits.argmax())
    flat = traverse_util.flatten_dict(converted.params, sep="/")
    assert {p: v.shape for p, v in flat.items()} == param_shapes(config)
