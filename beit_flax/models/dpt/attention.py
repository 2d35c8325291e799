"""Multi-head self-attention with BEiT's relative-position bias, and the kernels that compute it.

`Attention` is the module (q / k / v / out projections, the key without bias as in BEiT, the block's own
relative-position table); `attend` computes softmax(q k^T / sqrt(d) + bias) v with the implementation chosen by
the execution knob `attention`: portable XLA ops or cuDNN's fused kernel. Logits, bias and softmax are float32
whatever the compute dtype.

Memory: the XLA path holds (B, heads, N, N) logits and a (heads, N, N) bias per block, N = h*w + 1 tokens (BEiT-B
at 1024 x 1024: 806 MB each). Above `CHUNK_ABOVE_TOKENS` (execution knob `query_chunk`) it runs a chunk of queries
at a time and builds only that chunk's bias rows (`chunked_attention`), so memory grows with N instead of N^2; and
each block's bias is tied to its input, so that XLA cannot build every block's bias up front (`Attention`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Literal, get_args

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from beit_flax.models.dpt.config import DPTConfig
from beit_flax.models.dpt.relative_position import RelativePositionBias, bias_rows
from beit_flax.models.precision import Dense

AttentionImpl = Literal["auto", "xla", "cudnn"]
ATTENTION_IMPLS: tuple[str, ...] = get_args(AttentionImpl)
QueryChunk = int | Literal["auto"] | None
"""Queries per chunk of the XLA attention: "auto" (`query_chunk`), None (never chunk) or a positive int."""
CHUNK_ABOVE_TOKENS = 1280
""""auto" chunks the queries above this many tokens on every platform (memory): every released model at its native
size runs unchunked on a GPU (BEiT-L 512 at 512 x 512: 1025 tokens), BEiT-B 384 at 1024 x 1024 (4097 tokens)
chunked. On a CPU "auto" also chunks whenever the whole batch's float32 logits exceed CHUNK_BYTES (speed, below)."""
CHUNK_BYTES = 2**24
""""auto" sizes chunks so that the batch's (B, heads, chunk, N) float32 logits take at most about this much (16
MiB), 64 queries or more before the chunks are evened out (which takes off less than half). Chunks that
stay in cache are faster on a CPU: on a 2-core AMD EPYC, Depth Anything V2-S at 518 x 518, batch 4, took 2.0 s in
chunks of 128 queries against 2.8-3.0 s in chunks of 256-512 (16 MiB for one image, not for four) and 3.1 s
unchunked; at batch 1, 0.40 s against 0.43 / 0.58 s; BEiT-B 384 at batch 4 (64 MiB of logits) 2.78 s in chunks of
128 against 3.03 unchunked; BEiT-L 512 at 512 x 512, batch 1 (67 MB), 2.85 s in chunks of 205 against 3.45
unchunked, the same maps; earlier, BEiT-B at 1024 x 1024 ran 20% faster in chunks of 64-128 than of 256-341."""
BiasRows = Callable[[Any, int], jnp.ndarray]
"""`rows(first, count)` -> (heads, count, N) float32: rows first, ..., first+count-1 of an attention bias, `first` a
Python int or a traced int32 scalar; rows past N-1 (the padding of a last chunk) may hold anything finite."""


def query_chunk(chunk: QueryChunk, tokens: int, heads: int, batch: int = 1) -> int | None:
    """The queries per chunk for `batch` images of `tokens` queries and keys and `heads` heads, or None to run them
    all at once. "auto": above CHUNK_ABOVE_TOKENS, or on a CPU when the logits exceed CHUNK_BYTES (see both)."""
    if chunk == "auto":
        # a symbolic batch (a batch-polymorphic export): sized per image. Under jit over a mesh the batch is the
        # global one, so each device's chunks are smaller than they could be (safe for memory)
        batch = int(batch) if isinstance(batch, (int, np.integer)) else 1
        row_bytes = 4 * batch * heads * tokens  # one query's float32 logits over the batch
        on_cpu = jax.default_backend() == "cpu"
        if tokens <= CHUNK_ABOVE_TOKENS and not (on_cpu and row_bytes * tokens > CHUNK_BYTES):
            return None
        count = -(-tokens // max(64, CHUNK_BYTES // row_bytes))
        return -(-tokens // count) if count > 1 else None  # evened out: the last chunk padded by < `count` queries
    if chunk is None:
        return None
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"query_chunk must be 'auto', None or a positive int, got {chunk!r}")
    return chunk if chunk < tokens else None


def dense_rows(bias_hnn: jnp.ndarray) -> BiasRows:
    """`BiasRows` of a (heads, N, N) array (rows past N-1 repeat row N-1)."""
    n = bias_hnn.shape[1]

    def rows(first: Any, count: int) -> jnp.ndarray:
        if isinstance(first, int) and first == 0 and count == n:
            return bias_hnn
        return jnp.take(bias_hnn, jnp.minimum(first + jnp.arange(count), n - 1), axis=1)

    return rows


def attend(
    query: jnp.ndarray,
    key: jnp.ndarray,
    value: jnp.ndarray,
    bias: jnp.ndarray | BiasRows | None,
    implementation: AttentionImpl,
    chunk: QueryChunk = None,
) -> jnp.ndarray:
    """softmax(q k^T / sqrt(d) + bias) v for (B, N, heads, d) inputs and a float32 (heads, N, N) bias (an array, or
    `BiasRows` that build it, so that a chunk of queries needs only its own rows), or None for no bias (DINOv2).

    "xla": portable; logits, bias and softmax in float32; with `chunk` (`query_chunk`) a chunk of queries at a time
    (`chunked_attention`), else all at once (`xla_attention`). "cudnn": cuDNN's fused kernel (NVIDIA GPUs, 16-bit
    compute; see `cudnn_inputs`), which never holds the logits and ignores `chunk`. "auto": cuDNN for 16-bit compute
    on a GPU unless jax's cuDNN checks (head dim, GPU generation, cuDNN version; they run at trace time) refuse it,
    XLA otherwise.
    """
    n = query.shape[1]
    rows = bias if bias is None or callable(bias) else dense_rows(bias)
    whole = None if rows is None else rows(0, n)
    gpu_16_bit = jax.default_backend() == "gpu" and query.dtype in (jnp.bfloat16, jnp.float16)
    if implementation == "cudnn" or (implementation == "auto" and gpu_16_bit):
        try:
            return cudnn_attention(query, key, value, whole)
        except (NotImplementedError, ValueError, RuntimeError):
            if implementation == "cudnn":
                raise
    size = query_chunk(chunk, n, query.shape[2], query.shape[0])
    if size is None:
        return xla_attention(query, key, value, whole)
    return chunked_attention(query, key, value, rows, size)


def _attention_bhnd(
    q_bhqd: jnp.ndarray, k_bhkd: jnp.ndarray, v_bhkd: jnp.ndarray, bias_hqk: jnp.ndarray | None
) -> jnp.ndarray:
    """softmax(q k^T / sqrt(d) + bias) v heads first, (B, heads, Q, d) in the compute dtype."""
    logits = jnp.einsum("bhqd,bhkd->bhqk", q_bhqd, k_bhkd, preferred_element_type=jnp.float32)
    logits = logits * q_bhqd.shape[-1] ** -0.5
    probs = jax.nn.softmax(logits if bias_hqk is None else logits + bias_hqk[None], axis=-1)
    out = jnp.einsum("bhqk,bhkd->bhqd", probs.astype(v_bhkd.dtype), v_bhkd, preferred_element_type=jnp.float32)
    return out.astype(v_bhkd.dtype)


def xla_attention(
    query: jnp.ndarray, key: jnp.ndarray, value: jnp.ndarray, bias_hnn: jnp.ndarray | None
) -> jnp.ndarray:
    """`attend` as plain XLA ops, heads first: the math of `jax.nn.dot_product_attention(implementation="xla")`
    (logits accumulated and softmaxed in float32, probabilities cast back to the compute dtype for the second
    product), which contracts in the (B, N, heads, d) layout instead: on XLA CPU one BEiT-L 512 block's attention
    took 150 ms this way against 220-270 ms (BEiT-B 384: 22 vs 34 ms)."""
    q_bhnd, k_bhnd, v_bhnd = (jnp.transpose(t, (0, 2, 1, 3)) for t in (query, key, value))
    return jnp.transpose(_attention_bhnd(q_bhnd, k_bhnd, v_bhnd, bias_hnn), (0, 2, 1, 3))


def chunked_attention(
    query: jnp.ndarray, key: jnp.ndarray, value: jnp.ndarray, bias: BiasRows | None, chunk: int
) -> jnp.ndarray:
    """`xla_attention` `chunk` queries at a time (a `lax.map`, the last chunk padded), each chunk's bias rows built
    inside the loop body: memory grows with N, not N^2 (per chunk: (B, heads, chunk, N) logits and probabilities,
    (heads, chunk, N) bias). The softmax of each row still runs over all N keys at once, so every output is the same
    math as unchunked, up to float32 rounding. The body is a `jax.checkpoint`, so a gradient too recomputes each
    chunk's logits instead of keeping them all. (B, N, heads, d) -> (B, N, heads, d)."""
    b, n, heads, d = query.shape
    count = -(-n // chunk)
    q_bhnd, k_bhnd, v_bhnd = (jnp.transpose(t, (0, 2, 1, 3)) for t in (query, key, value))
    q_chunks = jnp.pad(q_bhnd, ((0, 0), (0, 0), (0, count * chunk - n), (0, 0))).reshape(b, heads, count, chunk, d)

    def rows(first_and_q: tuple[jnp.ndarray, jnp.ndarray]) -> jnp.ndarray:
        first, q_bhqd = first_and_q
        return _attention_bhnd(q_bhqd, k_bhnd, v_bhnd, None if bias is None else bias(first, chunk))

    firsts = jnp.arange(count, dtype=jnp.int32) * chunk
    out = jax.lax.map(jax.checkpoint(rows, prevent_cse=False), (firsts, jnp.moveaxis(q_chunks, 2, 0)))
    return jnp.transpose(out, (1, 0, 3, 2, 4)).reshape(b, count * chunk, heads, d)[:, :n]


def cudnn_inputs(
    query: jnp.ndarray, key: jnp.ndarray, value: jnp.ndarray, bias_hnn: jnp.ndarray
) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """Inputs as cuDNN's fused attention takes them: the bias in the compute dtype, and an even token count (with a
    bias, cuDNN's backward pass needs one, and BEiT's N = h*w + 1 is odd for every even grid). An odd N gets one
    zero token that no query sees (its bias column is the dtype's minimum) and whose own output row is dropped by
    the caller; its bias row is 0, so that row stays finite and adds no NaN to the gradients."""
    bias = bias_hnn.astype(query.dtype)
    n = query.shape[1]
    if n % 2 == 0:
        return query, key, value, bias
    pad = lambda t: jnp.pad(t, ((0, 0), (0, 1), (0, 0), (0, 0)))
    bias = jnp.pad(bias, ((0, 0), (0, 1), (0, 1))).at[:, :, n].set(jnp.finfo(bias.dtype).min)
    return pad(query), pad(key), pad(value), bias


def cudnn_unbiased_inputs(
    query: jnp.ndarray, key: jnp.ndarray, value: jnp.ndarray
) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray, jnp.ndarray | None]:
    """(query, key, value, key lengths (B,) int32 or None) for cuDNN's fused attention without a bias: an even
    token count. jax (0.10.2) refuses cuDNN's gradient for an odd one even without a bias (its check takes the
    placeholder of the absent bias for a bias), and DINOv2's h*w + 1 is odd for every even h*w (392 x 518: 1037
    tokens). An odd N gets one zero token that the key lengths hide from every query (cuDNN's padding mask); its
    own output row is dropped by the caller."""
    b, n = query.shape[:2]
    if n % 2 == 0:
        return query, key, value, None
    pad = lambda t: jnp.pad(t, ((0, 0), (0, 1), (0, 0), (0, 0)))
    return pad(query), pad(key), pad(value), jnp.full((b,), n, jnp.int32)


def cudnn_attention(
    query: jnp.ndarray, key: jnp.ndarray, value: jnp.ndarray, bias_hnn: jnp.ndarray | None
) -> jnp.ndarray:
    """`attend` through cuDNN: (B, N, heads, d) -> (B, N, heads, d)."""
    scale = query.shape[-1] ** -0.5
    n = query.shape[1]
    if bias_hnn is None:
        query, key, value, lengths = cudnn_unbiased_inputs(query, key, value)
        out = jax.nn.dot_product_attention(
            query, key, value, scale=scale, key_value_seq_lengths=lengths, implementation="cudnn"
        )
        return out[:, :n]
    query, key, value, bias = cudnn_inputs(query, key, value, bias_hnn)
    out = jax.nn.dot_product_attention(query, key, value, bias=bias[None], scale=scale, implementation="cudnn")
    return out[:, :n]


class Attention(nn.Module):
    """Multi-head self-attention with a relative-position bias. (B, N, C) -> (B, N, C).

    implementation, query_chunk: see `attend` and `query_chunk`.
    """

    config: DPTConfig
    implementation: AttentionImpl = "auto"
    dtype: jnp.dtype = jnp.float32
    query_chunk: QueryChunk = "auto"

    @nn.compact
    def __call__(self, tokens_bnc: jnp.ndarray, grid_hw: tuple[int, int]) -> jnp.ndarray:
        cfg = self.config
        b, n, c = tokens_bnc.shape
        table = RelativePositionBias(cfg.num_heads, cfg.train_grid, name="relative_position")(grid_hw)
        # The bias depends on parameters only, so XLA schedules every block's (heads, N, N) bias at the start of the
        # program and keeps them all alive (BEiT-L 512 at 512 x 512: 24 x 64 MB, BEiT-B at 1024 x 1024: 12 x 806
        # MB). A zero that depends on the block's input ties the bias to the block: it is built when the block runs.
        # (XLA CPU drops `lax.optimization_barrier`; XLA does not fold float x * 0.) Adding +-0 changes no value.
        table = table + 0 * tokens_bnc[0, 0, 0].astype(table.dtype)

        def project(name: str, use_bias: bool = True) -> jnp.ndarray:
            out = Dense(c, use_bias=use_bias, dtype=self.dtype, name=name)(tokens_bnc)
            return out.reshape(b, n, cfg.num_heads, c // cfg.num_heads)

        query, key, value = project("query"), project("key", use_bias=False), project("value")
        rows = functools.partial(bias_rows, table, grid_hw)
        out_bnhd = attend(query, key, value, rows, self.implementation, self.query_chunk)
        return Dense(c, dtype=self.dtype, name="proj")(out_bnhd.reshape(b, n, c))
