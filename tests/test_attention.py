"""Attention kernels: the heads-first XLA attention against jax.nn.dot_product_attention, the query-chunked one
against it (values, gradients, memory), cuDNN's padded layout through XLA, and which implementation `attend` picks
for each `attention` and `query_chunk` knob (cuDNN stubbed: no GPU here)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tiny_config import TINY

from beit_flax.models.dpt.attention import (
    CHUNK_ABOVE_TOKENS,
    CHUNK_BYTES,
    Attention,
    attend,
    chunked_attention,
    cudnn_inputs,
    dense_rows,
    query_chunk,
    xla_attention,
)
from beit_flax.models.dpt.encoder import encoder


@pytest.mark.parametrize("tokens", [7, 8])  # odd: padded to 8; even: as is
def test_cudnn_padding_changes_nothing(tokens):
    """cuDNN's input layout (an odd token count padded with one ignored token), checked through XLA on CPU: the
    same outputs and the same gradients for q, k, v and the bias, with no NaN from the padded row."""
    rng = np.random.default_rng(tokens)
    q, k, v = (jnp.asarray(rng.standard_normal((2, tokens, 3, 8)), jnp.float32) for _ in range(3))
    bias = jnp.asarray(rng.standard_normal((3, tokens, tokens)), jnp.float32)

    def loss(fn):
        return lambda *args: jnp.sum(jnp.sin(fn(*args)))

    def padded(q, k, v, b):  # cudnn_attention's steps, with XLA in place of cuDNN
        q, k, v, b = cudnn_inputs(q, k, v, b)
        return jax.nn.dot_product_attention(q, k, v, bias=b[None], scale=8**-0.5, implementation="xla")[:, :tokens]

    def plain(q, k, v, b):  # jax.nn.dot_product_attention as the reference of both layouts
        return jax.nn.dot_product_attention(q, k, v, bias=b[None], scale=8**-0.5, implementation="xla")

    np.testing.assert_allclose(padded(q, k, v, bias), plain(q, k, v, bias), rtol=1e-6, atol=1e-6)
    grads = [jax.grad(loss(fn), argnums=(0, 1, 2, 3))(q, k, v, bias) for fn in (padded, plain)]
    for ours, want in zip(*grads):
        assert ours.shape == want.shape and np.isfinite(ours).all()
        np.testing.assert_allclose(ours, want, rtol=1e-5, atol=1e-6)
    assert cudnn_inputs(q, k, v, bias)[0].shape[1] == tokens + tokens % 2


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_xla_attention_is_jax_dot_product_attention(dtype):
    """The heads-first XLA attention computes what jax.nn.dot_product_attention(implementation="xla") does, in
    float32 and bfloat16 (same rounding points: float32 logits and softmax, probabilities in the compute dtype)."""
    rng = np.random.default_rng(3)
    q, k, v = (jnp.asarray(rng.standard_normal((2, 9, 3, 8)), dtype) for _ in range(3))
    bias = jnp.asarray(rng.standard_normal((3, 9, 9)), jnp.float32)
    ours = xla_attention(q, k, v, bias)
    want = jax.nn.dot_product_attention(q, k, v, bias=bias[None], scale=8**-0.5, implementation="xla")
    assert ours.dtype == want.dtype == jnp.dtype(dtype)
    tolerance = 1e-6 if dtype == "float32" else 1e-2
    np.testing.assert_allclose(np.asarray(ours, np.float32), np.asarray(want, np.float32), atol=tolerance)
    if dtype == "float32":
        loss = lambda fn: lambda *a: jnp.sum(jnp.sin(fn(*a)))
        reference = lambda q, k, v, b: jax.nn.dot_product_attention(q, k, v, bias=b[None], scale=8**-0.5)
        for ours_g, want_g in zip(
            jax.grad(loss(xla_attention), argnums=(0, 1, 2, 3))(q, k, v, bias),
            jax.grad(loss(reference), argnums=(0, 1, 2, 3))(q, k, v, bias),
        ):
            np.testing.assert_allclose(ours_g, want_g, rtol=1e-5, atol=1e-6)


def test_auto_attention_picks_cudnn_for_16_bit_on_gpu_and_falls_back(monkeypatch):
    """ "auto" on a GPU tries cuDNN for 16-bit compute only, and when jax refuses it at trace time (an unsupported
    GPU or cuDNN raises RuntimeError / NotImplementedError) runs the XLA path; an explicit "cudnn" lets the refusal
    through. The cuDNN call is a stand-in here (this machine has no GPU)."""
    import beit_flax.models.dpt.attention as attention_module

    tried = []

    def refusing_cudnn(*args):
        tried.append(args[0].dtype)
        raise RuntimeError("cuDNN is not detected.")

    monkeypatch.setattr(attention_module.jax, "default_backend", lambda: "gpu")
    monkeypatch.setattr(attention_module, "cudnn_attention", refusing_cudnn)
    rng = np.random.default_rng(5)
    bias = jnp.asarray(rng.standard_normal((2, 9, 9)), jnp.float32)
    for dtype in (jnp.bfloat16, jnp.float32):
        q, k, v = (jnp.asarray(rng.standard_normal((1, 9, 2, 8)), dtype) for _ in range(3))
        np.testing.assert_array_equal(
            np.asarray(attend(q, k, v, bias, "auto"), np.float32), np.asarray(xla_attention(q, k, v, bias), np.float32)
        )
    assert tried == [jnp.bfloat16]  # float32 never goes to cuDNN
    with pytest.raises(RuntimeError, match="cuDNN"):
        attend(q.astype(jnp.bfloat16), k.astype(jnp.bfloat16), v.astype(jnp.bfloat16), bias, "cudnn")


def test_xla_knob_never_calls_cudnn_where_auto_would(monkeypatch):
    """attention="xla" must not take the cuDNN path even for 16-bit compute on a GPU, where "auto" takes it (the
    GPU is simulated and cuDNN stubbed with a recording XLA stand-in)."""
    import beit_flax.models.dpt.attention as attention_module

    calls = []

    def recording_cudnn(q, k, v, b):
        calls.append(q.dtype)
        return xla_attention(q, k, v, b)

    monkeypatch.setattr(attention_module.jax, "default_backend", lambda: "gpu")
    monkeypatch.setattr(attention_module, "cudnn_attention", recording_cudnn)
    rng = np.random.default_rng(6)
    q, k, v = (jnp.asarray(rng.standard_normal((1, 9, 2, 8)), jnp.bfloat16) for _ in range(3))
    bias = jnp.asarray(rng.standard_normal((2, 9, 9)), jnp.float32)
    attend(q, k, v, bias, "xla")
    assert calls == []
    attend(q, k, v, bias, "auto")
    assert calls == [jnp.bfloat16]


def _qkv_bias(tokens: int, heads: int = 3, dim: int = 8, seed: int = 0, dtype=jnp.float32):
    rng = np.random.default_rng(seed)
    q, k, v = (jnp.asarray(rng.standard_normal((2, tokens, heads, dim)), dtype) for _ in range(3))
    return q, k, v, jnp.asarray(rng.standard_normal((heads, tokens, tokens)), jnp.float32)


@pytest.mark.parametrize("tokens, chunk", [(37, 8), (37, 37), (36, 5), (9, 1), (50, 64)])
def test_chunked_attention_equals_unchunked(tokens, chunk):
    """Query chunks (the last one padded, or a single chunk larger than N) give the unchunked outputs and the
    same gradients for q, k, v and the bias: the softmax of each row still runs over every key."""
    q, k, v, bias = _qkv_bias(tokens, seed=tokens + chunk)
    ours = jax.jit(lambda *a: chunked_attention(*a[:3], dense_rows(a[3]), chunk))(q, k, v, bias)
    np.testing.assert_allclose(ours, xla_attention(q, k, v, bias), rtol=1e-6, atol=1e-6)
    loss = lambda fn: lambda *a: jnp.sum(jnp.sin(fn(*a)))
    chunked = lambda q, k, v, b: chunked_attention(q, k, v, dense_rows(b), chunk)
    for ours_g, want_g in zip(
        jax.grad(loss(chunked), argnums=(0, 1, 2, 3))(q, k, v, bias),
        jax.grad(loss(xla_attention), argnums=(0, 1, 2, 3))(q, k, v, bias),
    ):
        np.testing.assert_allclose(ours_g, want_g, rtol=1e-5, atol=1e-6)


def test_chunked_attention_in_bfloat16():
    q, k, v, bias = _qkv_bias(21, dtype=jnp.bfloat16)
    ours = chunked_attention(q, k, v, dense_rows(bias), 4)
    assert ours.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(ours, np.float32), np.asarray(xla_attention(q, k, v, bias), np.float32))


def test_query_chunk_knob(monkeypatch):
    """ "auto": on a GPU / TPU none up to `CHUNK_ABOVE_TOKENS` (every released model at its native size); on a CPU
    also chunks whenever the batch's logits exceed `CHUNK_BYTES`; chunks sized by `CHUNK_BYTES` over the batch (at
    least 64 queries), evened out; an int: that many queries when N is larger; None: never."""
    import jax

    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert query_chunk("auto", 577, 12) is None and query_chunk("auto", 1025, 16) is None  # B-384 @384, L-512 @512
    assert query_chunk("auto", 1025, 16, batch=32) is None
    assert query_chunk("auto", CHUNK_ABOVE_TOKENS, 12) is None
    # B-384 @1024: 85 per chunk evened out to 49 chunks of 84; @2048: 64; in a batch of 4, 64 as well
    assert query_chunk("auto", 4097, 12) == 84 and query_chunk("auto", 16385, 12) == 64
    assert query_chunk("auto", 4097, 12, batch=4) == 64
    monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
    assert query_chunk("auto", 577, 12) is None  # B-384 @384: 16.0 MB of logits, just under CHUNK_BYTES
    assert query_chunk("auto", 577, 12, batch=4) == 145  # 64 MB: 4 chunks
    assert query_chunk("auto", 1025, 16) == 205  # L-512 @512: 67 MB, 5 chunks
    assert query_chunk("auto", 1370, 6, batch=4) == 125  # Depth Anything V2-S @518: 11 chunks
    assert query_chunk("auto", 577, 12, np.int64(4)) == 145  # a numpy batch is a batch
    assert query_chunk("auto", 50, 12, batch=256) is None  # 31 MB, but one chunk of 64 would hold every query
    for tokens, heads, batch in ((577, 12, 4), (1025, 16, 1), (1370, 6, 4), (4097, 12, 1), (999, 7, 3), (1000, 12, 64)):
        size = query_chunk("auto", tokens, heads, batch)
        count = -(-tokens // size)
        assert count > 1 and size > 32  # evening out takes less than half off the 64-query floor
        assert 4 * batch * heads * size * tokens <= CHUNK_BYTES * 1.05 or size <= 64
        assert count * size - tokens < count  # evened out: the padding is less than one query per chunk
    assert query_chunk(128, 4097, 12) == 128 and query_chunk(128, 100, 12) is None
    assert query_chunk(None, 10**5, 1) is None
    for bad in (0, -1, 1.5, True, "big"):
        with pytest.raises(ValueError, match="query_chunk must be"):
            query_chunk(bad, 100, 1)
    from beit_flax import DPT

    with pytest.raises(ValueError, match="query_chunk must be"):
        DPT(TINY, query_chunk=0)


def test_chunked_attention_memory_grows_with_n_not_n_squared():
    """The compiled attention's temporaries (XLA's own buffer plan), relative-position bias included: unchunked
    they hold at least the (heads, N, N) bias, chunked a (B, heads, chunk, N) slab at a time - and doubling N
    about doubles them instead of quadrupling."""

    def temp_bytes(grid_hw: tuple[int, int], chunk) -> int:
        n = grid_hw[0] * grid_hw[1] + 1
        module = Attention(TINY, query_chunk=chunk)
        tokens = jax.ShapeDtypeStruct((1, n, TINY.width), jnp.float32)
        params = jax.eval_shape(lambda t: module.init(jax.random.key(0), t, grid_hw), tokens)
        fn = jax.jit(lambda p, t: module.apply(p, t, grid_hw))
        return fn.lower(params, tokens).compile().memory_analysis().temp_size_in_bytes

    n = 32 * 64 + 1
    bias = TINY.num_heads * n * n * 4  # 33.6 MB
    assert temp_bytes((32, 64), None) >= bias
    assert temp_bytes((32, 64), 64) < bias / 8
    assert temp_bytes((64, 64), 64) < 3 * temp_bytes((32, 64), 64)


@pytest.mark.parametrize("grid_hw", [(3, 5), (6, 2)])
def test_attention_module_chunked_equals_unchunked(grid_hw):
    """The module with its relative-position bias built a chunk of rows at a time (the cls query's among them):
    the same outputs and the same gradients, the table's included, as all rows at once."""
    n = grid_hw[0] * grid_hw[1] + 1
    tokens = jnp.asarray(np.random.default_rng(n).standard_normal((2, n, TINY.width)), jnp.float32)
    whole, chunked = Attention(TINY, query_chunk=None), Attention(TINY, query_chunk=4)
    params = whole.init(jax.random.key(0), tokens, grid_hw)["params"]
    rng = np.random.default_rng(1)
    params = jax.tree.map(lambda p: p + 0.3 * rng.standard_normal(p.shape).astype(np.float32), params)  # tables too
    run = lambda module: lambda p, t: module.apply({"params": p}, t, grid_hw)
    np.testing.assert_allclose(run(chunked)(params, tokens), run(whole)(params, tokens), rtol=1e-6, atol=1e-6)
    loss = lambda module: lambda p, t: jnp.sum(jnp.sin(run(module)(p, t)))
    ours, want = (jax.grad(loss(m), argnums=(0, 1))(params, tokens) for m in (chunked, whole))
    for path, leaf in jax.tree_util.tree_leaves_with_path(want):  # sums over tokens: float32 rounding apart
        got = dict(jax.tree_util.tree_leaves_with_path(ours))[path]
        np.testing.assert_allclose(got, leaf, rtol=0, atol=1e-6 * np.abs(leaf).max(), err_msg=str(path))


def test_each_blocks_bias_is_built_when_the_block_runs():
    """Every block's (heads, N, N) bias depends on parameters only; unless tied to its block, XLA builds them all
    up front and keeps them alive together (BEiT-B at 1024 x 1024: 12 x 806 MB). Unchunked, so that each block
    builds a whole one: 12 blocks must need about the temporaries of 4 (untied: 333 MB against 137 MB)."""
    grid_hw = (40, 40)  # N = 1601: one bias is 2 x 1601^2 x 4 bytes = 20.5 MB
    n = grid_hw[0] * grid_hw[1] + 1

    def temp_bytes(depth: int) -> int:
        cfg = TINY.replace(depth=depth, hooks=(0, 1, 2, depth - 1))
        module = encoder(cfg, query_chunk=None)
        tokens = jax.ShapeDtypeStruct((1, n, cfg.width), jnp.float32)
        params = jax.eval_shape(lambda t: module.init(jax.random.key(0), t, grid_hw), tokens)
        fn = jax.jit(lambda p, t: module.apply(p, t, grid_hw))
        return fn.lower(params, tokens).compile().memory_analysis().temp_size_in_bytes

    bias = 2 * n * n * 4
    assert temp_bytes(12) < temp_bytes(4) + 2 * bias
