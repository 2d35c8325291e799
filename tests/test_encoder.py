"""The BEiT encoder pieces vs direct torch computations with timm 0.6 / MiDaS v3.1 semantics.

* `Block`: pre-norm (LayerNorm eps 1e-6), fused qkv with bias concat(q_bias, 0, v_bias) split into the converter's
  query/key/value, q * head_dim**-0.5, + MiDaS's resized relative position bias, softmax, proj, gamma_1; LN2, fc1,
  exact GELU, fc2, gamma_2 - with random tables, layer scales and LayerNorm affines, on non-square grids.
* `Encoder`: the four hooked block outputs.
"""

from __future__ import annotations

import jax
import pytest
import torch
import torch.nn.functional as F
from flax_helpers import (
    assert_close,
    assert_params_match_module,
    randn,
    to_numpy,
    torch_linear_to_flax,
    torch_relative_position_bias,
)
from tiny_config import TINY as CFG

from beit_flax.models.dpt.config import DPTConfig
from beit_flax.models.dpt.encoder import Block, encoder, segments


def _torch_block_weights(gen: torch.Generator, cfg: DPTConfig) -> dict[str, torch.Tensor]:
    """Random weights with timm BEiT names and layouts (fused qkv, separate q_bias / v_bias)."""
    c, rows = cfg.width, cfg.table_rows
    return {
        "norm1.weight": randn(gen, c, scale=0.2, offset=1.0),
        "norm1.bias": randn(gen, c, scale=0.1),
        "attn.qkv.weight": randn(gen, 3 * c, c, scale=c**-0.5),
        "attn.q_bias": randn(gen, c, scale=0.2),
        "attn.v_bias": randn(gen, c, scale=0.2),
        "attn.relative_position_bias_table": randn(gen, rows, cfg.num_heads),
        "attn.proj.weight": randn(gen, c, c, scale=c**-0.5),
        "attn.proj.bias": randn(gen, c, scale=0.1),
        "gamma_1": randn(gen, c, scale=0.3, offset=0.8),
        "norm2.weight": randn(gen, c, scale=0.2, offset=1.0),
        "norm2.bias": randn(gen, c, scale=0.1),
        "mlp.fc1.weight": randn(gen, 4 * c, c, scale=c**-0.5),
        "mlp.fc1.bias": randn(gen, 4 * c, scale=0.1),
        "mlp.fc2.weight": randn(gen, c, 4 * c, scale=(4 * c) ** -0.5),
        "mlp.fc2.bias": randn(gen, c, scale=0.1),
        "gamma_2": randn(gen, c, scale=0.3, offset=0.8),
    }


def _flax_block_params(w: dict[str, torch.Tensor], cfg: DPTConfig) -> dict:
    """The converter's mapping: split the fused qkv rows [q; k; v], Linear -> w.T, key has no bias."""
    c = cfg.width
    q_w, k_w, v_w = w["attn.qkv.weight"].split(c)
    dense = lambda weight, bias: {"kernel": torch_linear_to_flax(weight), "bias": to_numpy(bias)}
    norm = lambda name: {"scale": to_numpy(w[f"{name}.weight"]), "bias": to_numpy(w[f"{name}.bias"])}
    return {
        "norm1": norm("norm1"),
        "attn": {
            "query": dense(q_w, w["attn.q_bias"]),
            "key": {"kernel": torch_linear_to_flax(k_w)},
            "value": dense(v_w, w["attn.v_bias"]),
            "relative_position": {"table": to_numpy(w["attn.relative_position_bias_table"])},
            "proj": dense(w["attn.proj.weight"], w["attn.proj.bias"]),
        },
        "gamma_1": to_numpy(w["gamma_1"]),
        "norm2": norm("norm2"),
        "mlp": {
            "fc1": dense(w["mlp.fc1.weight"], w["mlp.fc1.bias"]),
            "fc2": dense(w["mlp.fc2.weight"], w["mlp.fc2.bias"]),
        },
        "gamma_2": to_numpy(w["gamma_2"]),
    }


def torch_block(x: torch.Tensor, w: dict[str, torch.Tensor], cfg: DPTConfig, grid_hw) -> torch.Tensor:
    """timm 0.6 BEiT `Block.forward` with MiDaS's resized relative position bias."""
    b, n, c = x.shape
    heads = cfg.num_heads
    head_dim = c // heads

    h = F.layer_norm(x, (c,), w["norm1.weight"], w["norm1.bias"], eps=1e-6)
    qkv_bias = torch.cat([w["attn.q_bias"], torch.zeros_like(w["attn.v_bias"]), w["attn.v_bias"]])
    qkv = F.linear(h, w["attn.qkv.weight"], qkv_bias).reshape(b, n, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    attn = (q * head_dim**-0.5) @ k.transpose(-2, -1)
    attn = attn + torch_relative_position_bias(w["attn.relative_position_bias_table"], cfg.train_grid, grid_hw)[None]
    attn = attn.softmax(dim=-1)
    h = (attn @ v).transpose(1, 2).reshape(b, n, c)
    h = F.linear(h, w["attn.proj.weight"], w["attn.proj.bias"])
    x = x + w["gamma_1"] * h

    h = F.layer_norm(x, (c,), w["norm2.weight"], w["norm2.bias"], eps=1e-6)
    h = F.linear(F.gelu(F.linear(h, w["mlp.fc1.weight"], w["mlp.fc1.bias"])), w["mlp.fc2.weight"], w["mlp.fc2.bias"])
    return x + w["gamma_2"] * h


@pytest.mark.parametrize("query_chunk", ["auto", 5], ids=["unchunked", "chunked"])
@pytest.mark.parametrize("grid_hw", [(3, 5), (4, 4), (6, 2)])
def test_block_matches_timm(grid_hw, query_chunk):
    gen = torch.Generator().manual_seed(grid_hw[0] * 10 + grid_hw[1])
    weights = _torch_block_weights(gen, CFG)
    x = randn(gen, 2, 1 + grid_hw[0] * grid_hw[1], CFG.width)
    expected = torch_block(x, weights, CFG, grid_hw)

    params = _flax_block_params(weights, CFG)
    module = Block(CFG, query_chunk=query_chunk)
    assert_params_match_module(module, params, to_numpy(x), grid_hw)
    ours = jax.jit(lambda p, t: module.apply({"params": p}, t, grid_hw))(params, to_numpy(x))
    assert_close(ours, expected, f"Block on grid {grid_hw}")


def test_relative_position_bias_matters():
    """Guard against a test that cannot fail: the bias visibly changes the block output."""
    grid_hw = (3, 5)
    gen = torch.Generator().manual_seed(1)
    weights = _torch_block_weights(gen, CFG)
    x = randn(gen, 1, 1 + 15, CFG.width)
    with_bias = torch_block(x, weights, CFG, grid_hw)
    weights["attn.relative_position_bias_table"] = torch.zeros_like(weights["attn.relative_position_bias_table"])
    assert (with_bias - torch_block(x, weights, CFG, grid_hw)).abs().max() > 1e-2 * with_bias.abs().max()


def test_segments_end_at_the_hooks():
    assert [list(r) for r in segments(CFG.replace(depth=5, hooks=(0, 1, 3, 4)))] == [[0], [1], [2, 3], [4]]
    assert [list(r) for r in segments(CFG.replace(depth=6, hooks=(0, 1, 2, 3)))] == [[0], [1], [2], [3], [4, 5]]
    released = segments(DPTConfig())  # BEiT-L: hooks 5, 11, 17, 23
    assert [len(r) for r in released] == [6, 6, 6, 6]


@pytest.mark.parametrize("scan", [False, True], ids=["unrolled", "scan"])
@pytest.mark.parametrize("hooks", [(0, 1, 3, 4), (0, 1, 2, 3)], ids=["last-hooked", "tail"])
def test_encoder_returns_hooked_blocks(scan, hooks):
    """Unrolled and scanned, attention unchunked and in chunks of 3 queries: the same parameter paths (`block_{i}`,
    checked against the module's init) and the hooked outputs of timm's blocks; "tail" leaves block 4 after the last
    hook (computed, unused)."""
    cfg = CFG.replace(depth=5, hooks=hooks)
    grid_hw = (2, 3)
    gen = torch.Generator().manual_seed(7)
    blocks = [_torch_block_weights(gen, cfg) for _ in range(cfg.depth)]
    x = randn(gen, 2, 1 + 6, cfg.width)
    expected, t = [], x
    for index, weights in enumerate(blocks):
        t = torch_block(t, weights, cfg, grid_hw)
        if index in cfg.hooks:
            expected.append(t)

    params = {f"block_{i}": _flax_block_params(w, cfg) for i, w in enumerate(blocks)}
    module = encoder(cfg, scan=scan)
    assert_params_match_module(module, params, to_numpy(x), grid_hw)
    for chunk in ("auto", 3):
        module = encoder(cfg, scan=scan, query_chunk=chunk)
        ours = jax.jit(lambda p, v, module=module: module.apply({"params": p}, v, grid_hw))(params, to_numpy(x))
        assert len(ours) == 4
        for hook, got, want in zip(cfg.hooks, ours, expected):
            assert_close(got, want, f"Encoder (scan={scan}, query_chunk={chunk}) hook block {hook}")
