"""ZoeDepth's SILog loss and the metric-depth metrics (training/losses.py) against the original's torch code, and a
metric train / eval step on a tiny ZoeDepth."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from tiny_config import TINY

from beit_flax import training
from beit_flax.demo import zoedepth_torch as zt
from beit_flax.models.zoedepth import ZoeDepth
from beit_flax.params import init_params
from beit_flax.training import losses
from beit_flax.training.data import make_batch


def torch_silog(pred, target, mask, beta=0.15):
    """zoedepth/trainers/loss.py `SILogLoss.forward` (no resize: same shapes)."""
    pred, target = pred[mask], target[mask]
    alpha = 1e-7
    g = torch.log(pred + alpha) - torch.log(target + alpha)
    dg = torch.var(g) + beta * torch.pow(torch.mean(g), 2)
    return 10 * torch.sqrt(dg)


def inputs(seed: int):
    rng = np.random.default_rng(seed)
    target = rng.uniform(0.5, 20.0, (3, 17, 23)).astype(np.float32)
    pred = (target * np.exp(rng.normal(0.2, 0.3, target.shape))).astype(np.float32)
    mask = rng.uniform(size=target.shape) > 0.3
    target[~mask] = np.where(rng.uniform(size=(~mask).sum()) > 0.5, np.inf, 0.0)  # invalid pixels hold anything
    return pred, target, mask


def test_silog_value_and_gradient_match_the_original():
    for seed in range(3):
        pred, target, mask = inputs(seed)
        loss = lambda p, target=target, mask=mask: losses.silog_loss(p, target, mask)[0]
        value, grad = jax.value_and_grad(loss)(jnp.asarray(pred))
        pred_t = torch.tensor(pred, dtype=torch.float64, requires_grad=True)
        expected = torch_silog(pred_t, torch.tensor(target, dtype=torch.float64), torch.tensor(mask))
        expected.backward()
        np.testing.assert_allclose(float(value), expected.item(), rtol=2e-6)
        np.testing.assert_allclose(np.asarray(grad), pred_t.grad.numpy(), rtol=1e-4, atol=1e-9)
        assert np.all(np.asarray(grad)[~mask] == 0)


def test_silog_is_scale_invariant_up_to_beta_and_guarded():
    pred, target, mask = inputs(4)
    exact, _ = losses.silog_loss(target, target, mask)
    assert float(exact) == 0.0
    # a global scale s only enters through beta * log(s)^2
    base = float(losses.silog_loss(pred, target, mask)[0])
    scaled = float(losses.silog_loss(2 * pred, target, mask)[0])
    g = np.log(pred[mask] + 1e-7) - np.log(target[mask] + 1e-7)
    shifted = g + np.log(2.0)
    np.testing.assert_allclose(scaled, 10 * np.sqrt(np.var(shifted, ddof=1) + 0.15 * shifted.mean() ** 2), rtol=1e-5)
    assert scaled != base
    empty = np.zeros_like(mask)
    value, grad = jax.value_and_grad(lambda p: losses.silog_loss(p, target, empty)[0])(jnp.asarray(pred))
    assert float(value) == 0.0 and np.all(np.isfinite(np.asarray(grad)))


def test_metric_metrics_on_a_known_case():
    target = np.full((1, 2, 2), 2.0, np.float32)
    pred = np.array([[[2.0, 4.0], [1.0, 2.2]]], np.float32)
    mask = np.array([[[True, True, True, False]]]).reshape(1, 2, 2)
    m = jax.device_get(losses.metric_depth_metrics(pred, target, mask))
    np.testing.assert_allclose(m["abs_rel"], [(0 + 1 + 0.5) / 3], rtol=1e-6)
    np.testing.assert_allclose(m["rmse"], [np.sqrt((0 + 4 + 1) / 3)], rtol=1e-6)
    np.testing.assert_allclose(m["delta1"], [1 / 3], rtol=1e-6)  # ratios 1, 2, 2
    assert int(m["valid"][0]) == 3


def test_metric_train_and_eval_steps_on_a_tiny_zoedepth():
    config = zt.tiny_configs(TINY)["n"]
    model = ZoeDepth(config)
    params = init_params(config, seed=0)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    depth = rng.uniform(1.0, 5.0, (2, 32, 32)).astype(np.float32)
    batch = make_batch(images, depth, np.ones_like(depth, bool), target="depth")
    assert "depth" in batch and "inverse_depth" not in batch
    np.testing.assert_array_equal(batch["depth"], depth)
    state = training.create_train_state(
        model, params, optax.adam(1e-3), loss="silog", freeze=training.backbone(model), layer_decay=0.9
    )
    assert state.loss == "silog" and state.input_multiple == 32  # ZoeDepth's inputs: multiples of 32
    state, metrics = training.jit_train_step(state, batch)
    assert set(metrics) == {"loss", "silog", "grad_norm"} and np.isfinite(float(metrics["loss"]))
    evaluated = training.jit_eval_step(state, batch)
    assert set(evaluated) == {"loss", "silog", "abs_rel", "rmse", "delta1"}
    assert all(np.isfinite(float(v)) for v in evaluated.values())


def test_finetune_example_trains_metric_depth(tmp_path, capsys):
    import importlib.util
    from pathlib import Path

    import beit_flax

    script = Path(__file__).resolve().parents[1] / "examples" / "finetune.py"
    spec = importlib.util.spec_from_file_location("finetune_silog", script)
    finetune = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(finetune)
    out = tmp_path / "run"
    run = ["--loss", "silog", "--steps", "2", "--scenes", "4", "--size", "32", "--batch-size", "2", "--out", str(out)]
    assert finetune.main(run) == 0
    text = capsys.readouterr().out
    assert "RMSE" in text and "after:" in text
    model, _ = beit_flax.load(out / "finetuned.msgpack")
    assert isinstance(model, ZoeDepth)
    with pytest.raises(SystemExit) as exit:  # a ZoeDepth file with the MiDaS loss: refused in one line
        finetune.main(["--weights", str(out / "finetuned.msgpack"), "--size", "32", "--out", str(tmp_path / "b")])
    assert exit.value.code == 2
    assert "--loss silog or silog-da trains it" in capsys.readouterr().err


def torch_silog_da(pred, target, mask, lambd=0.5):
    """Depth-Anything-V2 metric_depth/util/loss.py `SiLogLoss.forward`."""
    diff_log = torch.log(target[mask]) - torch.log(pred[mask])
    return torch.sqrt(torch.pow(diff_log, 2).mean() - lambd * torch.pow(diff_log.mean(), 2))


def test_depth_anything_silog_matches_its_original():
    for seed in range(3):
        pred, target, mask = inputs(seed)
        loss = lambda p, target=target, mask=mask: losses.silog_da_loss(p, target, mask)[0]
        value, grad = jax.value_and_grad(loss)(jnp.asarray(pred))
        pred_t = torch.tensor(pred, dtype=torch.float64, requires_grad=True)
        expected = torch_silog_da(pred_t, torch.tensor(target, dtype=torch.float64), torch.tensor(mask))
        expected.backward()
        np.testing.assert_allclose(float(value), expected.item(), rtol=2e-6)
        np.testing.assert_allclose(np.asarray(grad), pred_t.grad.numpy(), rtol=1e-4, atol=1e-9)
        assert np.all(np.asarray(grad)[~mask] == 0)
        assert abs(float(value) - float(losses.silog_loss(pred, target, mask)[0])) > 0.1  # not ZoeDepth's
    empty = np.zeros_like(mask)
    value, grad = jax.value_and_grad(lambda p: losses.silog_da_loss(p, target, empty)[0])(jnp.asarray(pred))
    assert float(value) == 0.0 and np.all(np.isfinite(np.asarray(grad)))
