"""Attention kernels: the heads-first XLA attention against jax.nn.dot_product_attention, cuDNN's padded layout
through XLA, and which implementation `attend` picks for each `attention` knob (cuDNN stubbed: no GPU here)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from beit_flax.models.dpt.attention import attend, cudnn_inputs, xla_attention


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
        for ours_g, want_g in zip(jax.grad(loss(xla_attention), argnums=(0, 1, 2, 3))(q, k, v, bias),
                                  jax.grad(loss(reference), argnums=(0, 1, 2, 3))(q, k, v, bias)):
            np.testing.assert_allclose(ours_g, want_g, rtol=1e-5, atol=1e-6)


def test_auto_attention_picks_cudnn_for_16_bit_on_gpu_and_falls_back(monkeypatch):
    """"auto" on a GPU tries cuDNN for 16-bit compute only, and when jax refuses it at trace time (an unsupported
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
        np.testing.assert_array_equal(np.asarray(attend(q, k, v, bias, "auto"), np.float32),
                                      np.asarray(xla_attention(q, k, v, bias), np.float32))
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
