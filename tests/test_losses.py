"""beit_flax.training.losses against an inline torch autograd version of the MiDaS loss, and its invariances.

The torch loss below is written from the definitions (MiDaS `loss.py`: normal-equation alignment with a singular
system giving s = t = 0, batch-based MSE / (2 sum M), gradient matching at 4 scales, alpha = 0.5). Tolerance:
max|ours - torch| / max|torch| <= 1e-4, for the loss, for d loss / d prediction and for d loss / d parameters of
the whole tiny model (torch side: tests/torch_reference.py's functional MiDaS forward).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
import torch.nn.functional as F
import torch_reference as ref
from finetune_helpers import TINY, fast_jit, loss_and_grad, tiny_batch
from flax import traverse_util
from flax_helpers import assert_close
from hypothesis import given, settings
from hypothesis import strategies as st

from beit_flax.convert import open_checkpoint, torch_to_flax
from beit_flax.training import losses

TOL = 1e-4


# --- the torch reference -----------------------------------------------------------------------------------------


def torch_align(pred, target, mask):
    """MiDaS `compute_scale_and_shift`: 2x2 normal equations per image, s = t = 0 where the determinant is 0."""
    a00, a01, a11 = (mask * pred * pred).sum((1, 2)), (mask * pred).sum((1, 2)), mask.sum((1, 2))
    b0, b1 = (mask * pred * target).sum((1, 2)), (mask * target).sum((1, 2))
    det = a00 * a11 - a01 * a01
    ok = det != 0
    safe = torch.where(ok, det, torch.ones_like(det))
    scale = torch.where(ok, (a11 * b0 - a01 * b1) / safe, torch.zeros_like(det))
    shift = torch.where(ok, (-a01 * b0 + a00 * b1) / safe, torch.zeros_like(det))
    return scale, shift


def torch_midas_loss(pred, target, mask, alpha=0.5, scales=4):
    """(total, data, gradient) of MiDaS' ScaleAndShiftInvariantLoss with batch-based reduction."""
    scale, shift = torch_align(pred, target, mask)
    aligned = scale[:, None, None] * pred + shift[:, None, None]
    residual = aligned - target
    data = (mask * residual * residual).sum() / (2 * mask.sum())
    gradient = 0.0
    for k in range(scales):
        step = 2**k
        m = mask[:, ::step, ::step]
        diff = m * (aligned[:, ::step, ::step] - target[:, ::step, ::step])
        grad_x = (diff[:, :, 1:] - diff[:, :, :-1]).abs() * m[:, :, 1:] * m[:, :, :-1]
        grad_y = (diff[:, 1:, :] - diff[:, :-1, :]).abs() * m[:, 1:, :] * m[:, :-1, :]
        gradient = gradient + (grad_x.sum() + grad_y.sum()) / m.sum()
    return data + alpha * gradient, data, gradient


def loss_inputs(seed: int, batch: int = 3, height: int = 27, width: int = 22):
    """Prediction, target and mask with odd sizes (uneven subsampling), ~20% invalid, one image fully invalid.
    Invalid target pixels hold inf / 0 / NaN, as real data would."""
    rng = np.random.default_rng(seed)
    pred = rng.normal(1.0, 0.5, (batch, height, width)).astype(np.float32)
    target = (0.6 * pred + rng.normal(0.5, 0.3, pred.shape)).astype(np.float32)
    mask = rng.random(pred.shape) > 0.2
    mask[-1] = False
    dirty = target.copy()
    dirty[~mask] = rng.choice([np.inf, 0.0, np.nan], size=(~mask).sum())
    return pred, dirty, mask


# --- the loss alone ----------------------------------------------------------------------------------------------

# jitted: one compile each instead of one per primitive
_ssi = fast_jit(lambda p, d, m: losses.ssi_loss(p, d, m)[0])
_ssi_and_grad = fast_jit(jax.value_and_grad(losses.ssi_loss, has_aux=True))


def test_loss_and_prediction_gradient_match_torch():
    pred, target, mask = loss_inputs(0)
    (total, parts), grad = _ssi_and_grad(jnp.asarray(pred), jnp.asarray(target), jnp.asarray(mask))
    pred_t = torch.tensor(pred, dtype=torch.float64, requires_grad=True)
    clean = torch.tensor(np.where(mask, target, 0.0), dtype=torch.float64)  # torch: NaN-free input by hand
    total_t, data_t, gradient_t = torch_midas_loss(pred_t, clean, torch.tensor(mask, dtype=torch.float64))
    total_t.backward()
    assert_close(total, total_t.detach(), "ssi loss", TOL)
    assert_close(parts["data"], data_t.detach(), "data term", TOL)
    assert_close(parts["gradient"], gradient_t.detach(), "gradient term", TOL)
    assert_close(grad, pred_t.grad, "d loss / d prediction", TOL)
    assert np.all(np.asarray(grad)[~mask] == 0)  # invalid pixels get no gradient


def test_alignment_is_the_least_squares_solution():
    pred, target, mask = loss_inputs(1)
    scale, shift = losses.align_scale_shift(pred, target, mask)
    for b in range(2):
        p, d = pred[b][mask[b]].astype(np.float64), target[b][mask[b]].astype(np.float64)
        expected = np.linalg.lstsq(np.stack([p, np.ones_like(p)], 1), d, rcond=None)[0]
        np.testing.assert_allclose([scale[b], shift[b]], expected, rtol=1e-4)
    assert scale[2] == 0 and shift[2] == 0  # no valid pixel


def numpy_ssitrim(pred, target, mask, trim=0.2):
    """MiDaS eqs. 6-7 directly, float64: per image median / mean-absolute-deviation normalisation, the smallest
    (1 - trim) of the absolute residuals summed, over 2 x the batch's valid pixels."""
    kept_sum, pixels = 0.0, 0
    for p, d, m in zip(pred.astype(np.float64), target.astype(np.float64), mask):
        if not m.any():
            continue
        norm = lambda x, m=m: (x[m] - np.median(x[m])) / np.mean(np.abs(x[m] - np.median(x[m])))
        residual = np.sort(np.abs(norm(p) - norm(d)))
        kept_sum += residual[: int(np.floor((1 - trim) * m.sum()))].sum()
        pixels += m.sum()
    return kept_sum / (2 * pixels)


_ssitrim = fast_jit(lambda p, d, m: losses.ssitrim_loss(p, d, m)[0])


@pytest.mark.parametrize("seed", [0, 1])
def test_ssimae_and_ssitrim_are_midas_equations_5_to_7(seed):
    pred, target, mask = loss_inputs(seed, height=26)  # an even pixel count in some images: two middle values
    assert float(_ssitrim(pred, target, mask)) == pytest.approx(numpy_ssitrim(pred, target, mask), rel=1e-5)
    ssimae = float(losses.ssimae_loss(pred, target, mask)[0])
    assert ssimae == pytest.approx(numpy_ssitrim(pred, target, mask, trim=0.0), rel=1e-5)
    moved = (4.0 * pred + 2.5).astype(np.float32)  # invariant to a positive scale and any shift
    assert float(_ssitrim(moved, target, mask)) == pytest.approx(numpy_ssitrim(pred, target, mask), rel=1e-4)
    grad = jax.grad(lambda p: losses.ssitrim_loss(p, target, mask)[0])(jnp.asarray(pred))
    assert np.all(np.isfinite(np.asarray(grad))) and np.all(np.asarray(grad)[~mask] == 0)


def test_mad_losses_learn_the_sign_that_least_squares_cannot():
    """A prediction a * target + b * noise + c started inverted (a = -1): Adam on ssimae / ssitrim turns it the
    right way up (a > 0); the least-squares loss fits the flipped map as well as the upright one: it stays inverted."""
    rng = np.random.default_rng(9)
    target = jnp.asarray(rng.uniform(0.2, 2.0, (2, 16, 16)), jnp.float32)
    noise = jnp.asarray(rng.normal(size=target.shape), jnp.float32)
    mask = jnp.ones(target.shape, bool)
    predict = lambda theta: theta[0] * target + theta[1] * noise + theta[2]
    adam = optax.adam(0.05)
    for loss, sign in ((losses.ssimae_loss, 1), (losses.ssitrim_loss, 1), (losses.ssi_loss, -1)):
        objective = lambda theta, loss=loss: loss(predict(theta), target, mask)[0]

        @jax.jit
        def step(theta, opt_state, objective=objective):
            updates, opt_state = adam.update(jax.grad(objective)(theta), opt_state)
            return optax.apply_updates(theta, updates), opt_state

        theta = jnp.array([-1.0, 0.5, 3.0])
        opt_state = adam.init(theta)
        for _ in range(300):
            theta, opt_state = step(theta, opt_state)
        correlation = np.corrcoef(np.ravel(predict(theta)), np.ravel(target))[0, 1]
        assert sign * correlation > 0.99, (loss.__name__, correlation)


def test_metrics_do_not_flip_an_inverted_prediction():
    """depth_metrics keeps the scale >= 0: an inverted map scores as the constant mean, the upright one perfectly."""
    rng = np.random.default_rng(8)
    target = rng.uniform(0.2, 2.0, (1, 16, 16)).astype(np.float32)
    mask = np.ones(target.shape, bool)
    flat_depth, true_depth = 1 / target.astype(np.float64).mean(), 1 / target.astype(np.float64)
    flipped = losses.depth_metrics(3.0 - target, target, mask)
    np.testing.assert_allclose(flipped["abs_rel"], np.mean(np.abs(flat_depth - true_depth) / true_depth), rtol=1e-5)
    assert float(losses.depth_metrics(3.0 + target, target, mask)["abs_rel"][0]) < 1e-5


def test_singular_and_empty_inputs_give_zero_alignment_and_finite_gradients():
    _, target, mask = loss_inputs(2)
    constant = np.full(target.shape, 0.3, np.float32)
    scale, shift = losses.align_scale_shift(constant, target, mask)
    assert np.all(np.asarray(scale) == 0) and np.all(np.asarray(shift) == 0)
    for pred, m in [(constant, mask), (np.random.default_rng(0).random(target.shape), np.zeros_like(mask))]:
        (total, _parts), grad = _ssi_and_grad(jnp.asarray(pred, jnp.float32), jnp.asarray(target), jnp.asarray(m))
        assert np.isfinite(float(total)) and np.all(np.isfinite(np.asarray(grad)))
    assert float(total) == 0 and np.all(np.asarray(grad) == 0)  # nothing valid: nothing to learn


def test_bool_and_float_masks_agree_and_shapes_are_checked():
    pred, target, mask = loss_inputs(3)
    as_bool, as_float = _ssi(pred, target, mask), _ssi(pred, target, mask.astype(np.float32))
    assert float(as_bool) == float(as_float)
    with pytest.raises(ValueError, match=r"\(B, H, W\)"):
        losses.ssi_loss(pred, target[:, :-1], mask)
    with pytest.raises(ValueError, match=r"\(B, H, W\)"):
        losses.ssi_loss(pred[0], target[0], mask[0])


_PRED, _TARGET, _MASK = loss_inputs(4)
_BASE = float(_ssi(_PRED, _TARGET, _MASK))


@settings(max_examples=40, deadline=None)
@given(scale=st.floats(0.05, 20.0), shift=st.floats(-5.0, 5.0))
def test_ssi_loss_is_invariant_to_scale_and_shift_of_the_prediction(scale, shift):
    moved = (scale * _PRED.astype(np.float64) + shift).astype(np.float32)
    assert float(_ssi(moved, _TARGET, _MASK)) == pytest.approx(_BASE, rel=TOL)


# --- metrics -----------------------------------------------------------------------------------------------------


def test_metrics_of_an_affine_prediction_are_perfect():
    rng = np.random.default_rng(5)
    target = rng.uniform(0.1, 2.0, (2, 16, 16)).astype(np.float32)
    mask = rng.random(target.shape) > 0.1
    metrics = losses.depth_metrics(3.0 * target - 0.7, target, mask)
    np.testing.assert_allclose(metrics["abs_rel"], 0, atol=1e-5)
    np.testing.assert_array_equal(metrics["delta1"], 1)
    np.testing.assert_array_equal(metrics["valid"], mask.sum((1, 2)))


def test_metrics_match_a_direct_numpy_computation():
    pred, target, mask = loss_inputs(6)
    target = np.where(mask, np.abs(target) + 0.1, 0).astype(np.float32)
    pred = np.abs(pred)
    got = losses.depth_metrics(pred, target, mask, depth_cap=5.0)
    for b in range(2):
        p, d = pred[b][mask[b]].astype(np.float64), target[b][mask[b]].astype(np.float64)
        s, t = np.linalg.lstsq(np.stack([p, np.ones_like(p)], 1), d, rcond=None)[0]
        pred_depth, true_depth = 1 / np.maximum(s * p + t, 1 / 5.0), 1 / d
        np.testing.assert_allclose(got["abs_rel"][b], np.mean(np.abs(pred_depth - true_depth) / true_depth), rtol=1e-4)
        ratio = np.maximum(pred_depth / true_depth, true_depth / pred_depth)
        np.testing.assert_allclose(got["delta1"][b], np.mean(ratio < 1.25), atol=1.5 / p.size)
    assert got["abs_rel"][2] == 0 and got["delta1"][2] == 0 and got["valid"][2] == 0
    with pytest.raises(ValueError, match="depth_cap"):
        losses.depth_metrics(pred, target, mask, depth_cap=0.0)


# --- the whole model: gradients w.r.t. parameters against torch autograd ----------------------------------------


# flax path -> (MiDaS-layout tensor, torch gradient -> flax layout)
PARAMS_TO_COMPARE = {
    "head/conv3/bias": ("scratch.output_conv.4.bias", lambda g: g),
    "fusion_1/out_conv/kernel": ("scratch.refinenet1.out_conv.weight", lambda g: g.transpose(2, 3, 1, 0)),
    "reassemble_2/resample/kernel": ("pretrained.act_postprocess2.4.weight", lambda g: g.transpose(2, 3, 1, 0)),
    "encoder/block_3/gamma_1": ("pretrained.model.blocks.3.gamma_1", lambda g: g),
    "encoder/block_1/mlp/fc1/kernel": ("pretrained.model.blocks.1.mlp.fc1.weight", lambda g: g.T),
    "encoder/block_2/attn/key/kernel": ("pretrained.model.blocks.2.attn.qkv.weight", lambda g: g[32:64].T),
    "encoder/block_0/attn/relative_position/table": (
        "pretrained.model.blocks.0.attn.relative_position_bias_table",
        lambda g: g,
    ),
    "patch_embed/proj/kernel": ("pretrained.model.patch_embed.proj.weight", lambda g: g.transpose(2, 3, 1, 0)),
}


def torch_depth(sd, spec, images_nchw):
    """`ref.midas_forward` with autograd on (it runs under no_grad): the same functional pieces, chained."""
    grid = (images_nchw.shape[2] // 16, images_nchw.shape[3] // 16)
    hooks = ref.midas_encoder(sd, spec, images_nchw)
    reassembled = ref.midas_reassemble(sd, hooks, grid)
    layers_rn = [F.conv2d(y, sd[f"scratch.layer{k}_rn.weight"], None, padding=1) for k, y in enumerate(reassembled, 1)]
    return ref.midas_head(sd, ref.midas_fusion(sd, layers_rn)[-1])


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The tiny perturbed transformers model in the MiDaS layout, and its converted flax parameters."""
    sd = ref.to_midas_layout(ref.state_dict_v5(ref.build_reference(ref.TINY, seed=0)), ref.TINY)
    path = tmp_path_factory.mktemp("reference") / "tiny_midas.pt"
    torch.save(sd, path)
    converted = torch_to_flax(open_checkpoint(path))
    assert converted.config == TINY
    return sd, converted.params


def test_model_loss_gradients_match_torch_autograd(reference):
    sd, params = reference
    batch = tiny_batch(seed=7)
    loss, grads = loss_and_grad()(params, batch)

    sd = {k: v.clone().requires_grad_(k in {n for n, _ in PARAMS_TO_COMPARE.values()}) for k, v in sd.items()}
    images = torch.from_numpy(batch["image"].transpose(0, 3, 1, 2).copy())
    with torch.no_grad():  # the chained pieces are exactly ref.midas_forward
        np.testing.assert_array_equal(torch_depth(sd, ref.TINY, images), ref.midas_forward(sd, ref.TINY, images))
    depth = torch_depth(sd, ref.TINY, images)
    ref.assert_nondegenerate(depth)
    mask = torch.from_numpy(batch["mask"].astype(np.float32))
    loss_t = torch_midas_loss(depth, torch.from_numpy(batch["inverse_depth"]), mask)[0]
    loss_t.backward()

    assert_close(loss, loss_t.detach(), "model loss", TOL)
    flat = traverse_util.flatten_dict(grads, sep="/")
    for path, (name, to_flax) in PARAMS_TO_COMPARE.items():
        assert_close(flat[path], to_flax(sd[name].grad.numpy()), f"d loss / d {path}", TOL)
