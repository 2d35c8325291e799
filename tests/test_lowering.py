"""GPU and TPU readiness without a device: every program a user runs, lowered for `cuda` and `tpu` from this CPU
machine (`jax.jit(f).trace(...).lower(lowering_platforms=...)`), and what can be checked in the StableHLO there.

Programs: inference (`batcher.jitted_apply`, what `beit_flax.predict` / `beit-depth` run) in float32 and bfloat16
for each family's tiny config; the training step (`training.sharded_steps`, donating, as examples/finetune.py runs
it; `jit_train_step`, not donating); the sharded predict and the FSDP train step on 4 forced CPU devices (a
subprocess); the cuDNN attention path with jax's cuDNN checks stubbed (tracing it needs a cuDNN here). Checks: no
host callbacks or transfers, no custom calls but the expected ones, float32 products at HIGHEST precision (on a TPU
DEFAULT is one bf16 pass, on a GPU TF32), donation, shardings.

And XLA's FLOP count of the compiled CPU program against an analytic count of the architecture (benchmarks/
flop_count.py) at native size: BEiT-B 384 at 384 x 384, Depth Anything V2 ViT-S at 518 x 518 (1370 tokens: the
chunked attention, whose chunk body is a `jax.checkpoint`: at inference it must not recompute).

What only a GPU shows (the cuDNN kernels' numbers and speed, compile time): benchmarks/device_check.sh.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from lowering_helpers import (
    PLATFORMS,
    abstract_params,
    custom_call_targets,
    donated,
    host_transfers,
    lowered_texts,
    network_size,
    products,
    signature,
)
from sharding_helpers import ROOT, forced_devices_env

from beit_flax import batcher, sharding, training
from beit_flax.models import registry
from beit_flax.models.dpt.attention import cudnn_unbiased_inputs, query_chunk
from beit_flax.params import init_params

sys.path.insert(0, str(ROOT / "benchmarks"))
from flop_count import Attention, beit_dpt, depth_anything, gflop, relative  # benchmarks/flop_count.py

FAMILIES = sorted(registry.FAMILIES)
SHARDING_ANNOTATIONS = {"Sharding", "SPMDFullToShardShape", "SPMDShardToFullShape"}
FLOP_TOLERANCE = 0.05


def inference_program(name: str, dtype: str, **knobs):
    """(jitted apply on a one-device mesh, abstract params, a batch of 2 network inputs) of a family's tiny model."""
    family = registry.FAMILIES[name]
    model = family.build(family.tiny, dtype=dtype, **knobs)
    images = jax.ShapeDtypeStruct((2, *network_size(family, family.tiny), 3), jnp.float32)
    return batcher.jitted_apply(model, sharding.local_mesh(1)), abstract_params(family.tiny), images


def float32_products_below_highest(text: str) -> list[tuple[str, list[str], str]]:
    """Products with only float32 operands not at HIGHEST precision."""
    return [p for p in products(text) if set(p[1]) == {"f32"} and "HIGHEST" not in p[2]]


def assert_device_only(text: str, allowed: set[str] = SHARDING_ANNOTATIONS) -> None:
    assert host_transfers(text) == []
    assert set(custom_call_targets(text)) <= allowed, set(custom_call_targets(text)) - allowed


# ------------------------------------------------------------------------------------------------------ inference


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("name", FAMILIES)
def test_inference_lowers_for_gpu_and_tpu(name, dtype):
    program, params, images = inference_program(name, dtype)
    for platform, lowered in lowered_texts(program, params, images).items():
        text = lowered.as_text()
        # "auto" attention traced on a CPU host is the XLA one: no cuDNN call (that path: the cudnn test below)
        assert_device_only(text)
        assert float32_products_below_highest(text) == [], platform  # float32 islands stay float32 in bf16 too
        if dtype == "bfloat16":
            assert any(set(p[1]) == {"bf16"} for p in products(text))  # the bulk runs in bf16
        sig = signature(lowered)
        b, h, w, _ = images.shape
        assert [r["type"] for r in sig["results"]] == [f"tensor<{b}x{h}x{w}xf32>"]
        assert not any(donated(a["attrs"]) for a in sig["args"])  # params are reused across calls


def test_host_callbacks_are_detected_and_refused_off_the_host():
    """The checks can fail: a callback is seen in a CPU lowering, and jax refuses to lower one for cuda or tpu."""

    def with_callback(x):
        jax.debug.callback(lambda v: None, x)
        return x * 2

    spec = jax.ShapeDtypeStruct((3,), jnp.float32)
    text = jax.jit(with_callback).trace(spec).lower(lowering_platforms=("cpu",)).as_text()
    assert any("callback" in t for t in host_transfers(text)), text
    for platform in PLATFORMS:
        with pytest.raises(ValueError, match="different from the lowering platform"):
            jax.jit(with_callback).trace(spec).lower(lowering_platforms=(platform,))


# ---------------------------------------------------------------------------------------------- the cuDNN path


@pytest.fixture
def cudnn_lowerable(monkeypatch):
    """jax's cuDNN attention checks answer as on an H100 with cuDNN 9.10 (they ask the CUDA plugin, which this
    machine lacks: unstubbed, tracing attention="cudnn" raises "cuDNN is not detected"). Lowering for cuda then
    emits the fused-attention custom calls that a GPU would run."""
    fused = pytest.importorskip("jax._src.cudnn.fused_attention_stablehlo")
    for name in ("check_cudnn_version", "check_compute_capability", "is_cuda_compute_capability_equal"):
        if not hasattr(fused, name):
            pytest.skip(f"jax {jax.__version__} has no {name} to stub; the device script covers the cuDNN path")
    monkeypatch.setattr(fused, "check_cudnn_version", lambda: 91000)
    hopper = lambda capability: tuple(map(int, capability.split("."))) <= (9, 0)
    monkeypatch.setattr(fused, "check_compute_capability", hopper)
    monkeypatch.setattr(fused, "is_cuda_compute_capability_equal", lambda capability: False)


def fused_attention_calls(text: str) -> list[str]:
    """The cuDNN fused-attention calls' lines (target and operand types)."""
    return [line.strip() for line in text.splitlines() if "custom_call @__cudnn$fmha" in line]


def token_counts(call: str) -> set[int]:
    """The sequence lengths of a fused-attention call's (B, N, heads, d) operands."""
    operands = call.rsplit(" : (", 1)[-1].split(") ->")[0]
    return {int(shape.split("x")[1]) for shape in re.findall(r"tensor<((?:\d+x){3}\d+)x\w+>", operands)}


@pytest.mark.parametrize("name", FAMILIES)
def test_cudnn_attention_lowers_for_cuda(name, cudnn_lowerable):
    family = registry.FAMILIES[name]
    depth = family.encoder_depth(family.tiny)
    program, params, images = inference_program(name, "bfloat16", attention="cudnn")
    text = lowered_texts(program, params, images, platforms=("cuda",))["cuda"].as_text()
    calls = fused_attention_calls(text)
    assert len(calls) == depth, calls  # one fused kernel per block, no XLA attention left
    assert_device_only(text, SHARDING_ANNOTATIONS | {c.split("@")[1].split("(")[0] for c in calls})
    for call in calls:  # jax's cuDNN gradient needs an even token count: `cudnn_inputs`, `cudnn_unbiased_inputs`
        assert "bf16" in call and all(n % 2 == 0 for n in token_counts(call)), call

    # the gradient through the same kernels (fine-tuning with attention="cudnn"), one backward call per block
    model = family.build(family.tiny, dtype="bfloat16", attention="cudnn")
    loss = lambda p, x: jnp.mean(model.apply({"params": p}, x) ** 2)
    text = lowered_texts(jax.jit(jax.grad(loss)), params, images, platforms=("cuda",))["cuda"].as_text()
    assert sum("Backward" in c for c in fused_attention_calls(text)) == depth
    assert host_transfers(text) == []


@pytest.mark.parametrize("tokens", [17, 18])
def test_cudnn_unbiased_padding_changes_nothing(tokens):
    """`cudnn_unbiased_inputs`' padding token and key lengths, run through jax's XLA attention in place of cuDNN:
    outputs and gradients equal the unpadded attention's."""
    rng = np.random.default_rng(tokens)
    q, k, v = (jnp.asarray(rng.standard_normal((2, tokens, 2, 8)), jnp.float32) for _ in range(3))

    def padded(q, k, v):  # cudnn_attention's steps without a bias, with XLA in place of cuDNN
        pq, pk, pv, lengths = cudnn_unbiased_inputs(q, k, v)
        out = jax.nn.dot_product_attention(pq, pk, pv, key_value_seq_lengths=lengths, implementation="xla")
        return out[:, :tokens]

    plain = lambda q, k, v: jax.nn.dot_product_attention(q, k, v, implementation="xla")
    padded, plain = jax.jit(padded), jax.jit(plain)
    assert cudnn_unbiased_inputs(q, k, v)[0].shape[1] == tokens + tokens % 2
    reference = plain(q, k, v)
    assert float(jnp.max(jnp.abs(reference))) > 0.1
    np.testing.assert_allclose(padded(q, k, v), reference, rtol=1e-5, atol=1e-6)
    loss = lambda f: lambda *qkv: jnp.sum(f(*qkv) * jnp.sin(jnp.arange(tokens))[None, :, None, None])
    gradient = lambda f: jax.jit(jax.grad(loss(f), (0, 1, 2)))(q, k, v)
    for got, want in zip(gradient(padded), gradient(plain)):
        assert float(jnp.max(jnp.abs(want))) > 1e-3
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
def test_auto_attention_on_a_gpu_picks_cudnn_for_16_bit_compute(dtype, cudnn_lowerable, monkeypatch):
    """attention="auto" as traced on a GPU host (jax.default_backend() == "gpu"): cuDNN for 16-bit compute, the
    XLA attention for float32 (cuDNN's fused kernel has no float32 path)."""
    name = FAMILIES[0]
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    cached, params, images = inference_program(name, dtype)
    program = jax.jit(lambda *args: cached.__wrapped__(*args))  # a new trace, not the one made on a CPU host
    text = lowered_texts(program, params, images, platforms=("cuda",))["cuda"].as_text()
    expected = 0 if dtype == "float32" else registry.FAMILIES[name].encoder_depth(registry.FAMILIES[name].tiny)
    assert len(fused_attention_calls(text)) == expected


# ---------------------------------------------------------------------------------------------- training step


def train_program(name: str):
    """(state, abstract batch of 2) of a family's tiny model with its default loss, AdamW."""
    family = registry.FAMILIES[name]
    state = training.create_train_state(family.build(family.tiny), init_params(family.tiny, 0), optax.adamw(1e-3))
    h, w = network_size(family, family.tiny)
    batch = {
        "image": jax.ShapeDtypeStruct((2, h, w, 3), jnp.float32),
        training.LOSS_TARGETS[state.loss]: jax.ShapeDtypeStruct((2, h, w), jnp.float32),
        "mask": jax.ShapeDtypeStruct((2, h, w), np.bool_),
    }
    return state, batch


@pytest.mark.parametrize("name", FAMILIES)
def test_training_step_lowers_with_donation(name):
    state, batch = train_program(name)
    mesh = sharding.train_mesh()
    step, _ = training.sharded_steps(sharding.state_shardings(state, mesh), mesh, donate=True)
    leaves = len(jax.tree.leaves(state))
    for platform, lowered in lowered_texts(step, state, batch).items():
        text = lowered.as_text()
        assert_device_only(text)
        assert float32_products_below_highest(text) == [], platform  # the backward pass's products too
        args = signature(lowered)["args"]
        assert len(args) == leaves + len(batch)
        assert all(donated(a["attrs"]) for a in args[:leaves]), platform  # the whole old state
        assert not any(donated(a["attrs"]) for a in args[leaves:])  # never the batch
    # jit_train_step keeps the old state usable (its documented contract): nothing donated
    lowered = lowered_texts(training.jit_train_step, state, batch, platforms=("cuda",))["cuda"]
    assert not any(donated(a["attrs"]) for a in signature(lowered)["args"])


# ---------------------------------------------------------------------------------- sharded, on 4 CPU devices

DEVICES = 4


@pytest.fixture(scope="module")
def sharded():
    run = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "lowering_helpers.py")],
        cwd=ROOT,
        env=forced_devices_env(DEVICES),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["devices"] == DEVICES
    return report


@pytest.mark.parametrize("name", FAMILIES)
def test_sharded_predict_lowers_with_its_shardings(sharded, name):
    for platform in PLATFORMS:
        program = sharded["predict"][name][platform]
        assert program["host_transfers"] == [] and set(program["custom_calls"]) <= SHARDING_ANNOTATIONS
        assert program["mesh_devices"] == DEVICES
        *params, images = program["args"]
        assert images["split"] == [True, False, False, False]  # the batch over the devices
        assert [r["split"] for r in program["results"]] == [[True, False, False]]
        assert params and all(p["split"] is not None and not any(p["split"]) for p in params)  # replicated


def test_sharded_fsdp_training_step_lowers_with_shardings_and_donation(sharded):
    train = sharded["train"]
    leaves, split = train["state_leaves"], train["fsdp_split_leaves"]
    assert split > 0
    for platform in PLATFORMS:
        program = train[platform]
        assert program["host_transfers"] == [] and set(program["custom_calls"]) <= SHARDING_ANNOTATIONS
        assert program["mesh_devices"] == DEVICES
        state, batch = program["args"][:leaves], program["args"][leaves:]
        assert all(a["donated"] for a in state) and not any(a["donated"] for a in batch)
        assert sum(any(a["split"]) for a in state) == split  # the FSDP layout reached the program
        assert all(a["split"][0] for a in batch)
        new_state = program["results"][:leaves]
        assert sum(any(r["split"]) for r in new_state) == split  # and the new state keeps it


# ----------------------------------------------------------------------------------------------------- FLOPs


def loop_bodies_counted_once() -> bool:
    """Whether XLA's cost analysis counts a while loop's body once (not times its trip count): a probe."""
    matmul = lambda x: x @ x
    cost = lambda f, shape: f.lower(jax.ShapeDtypeStruct(shape, jnp.float32)).compile().cost_analysis()
    flops = lambda f, shape: (lambda c: (c[0] if isinstance(c, list) else c)["flops"])(cost(f, shape))
    one = flops(jax.jit(matmul), (64, 64))
    looped = flops(jax.jit(lambda xs: jax.lax.map(matmul, xs)), (4, 64, 64))
    assert looped == pytest.approx(one, rel=0.01) or looped == pytest.approx(4 * one, rel=0.01), (one, looped)
    return looped < 2 * one


@pytest.mark.parametrize(
    ("name", "preset", "side", "chunk"),
    [
        ("dpt", "dpt_beit_base_384", 384, "auto"),
        ("depth_anything", "depth_anything_v2_small", 518, "auto"),
        ("depth_anything", "depth_anything_v2_small", 518, None),
    ],
)
def test_xla_flops_match_the_analytic_count(name, preset, side, chunk):
    """XLA's count of the compiled inference program per image within 5 % of the architecture's. The chunked
    attention (Depth Anything ViT-S at 518 x 518: 1370 tokens) runs its chunks in a loop whose body is a
    `jax.checkpoint`: without a gradient nothing may be recomputed, so the body costs one chunk's attention.
    XLA counts a loop body once (probe), so the expected count does too."""
    family = registry.FAMILIES[name]
    config = family.presets[preset]
    model = family.build(config, query_chunk=chunk)
    program = jax.jit(lambda params, images: model.apply({"params": params}, images))
    images = jax.ShapeDtypeStruct((1, side, side, 3), jnp.float32)
    cost = program.lower(abstract_params(config), images).compile().cost_analysis()
    measured = (cost[0] if isinstance(cost, list) else cost)["flops"]

    tokens = (side // config.patch_size) ** 2 + 1
    size = query_chunk(chunk, tokens, config.num_heads)
    attention = None
    if size is not None:
        chunks = -(-tokens // size)
        attention = Attention(size if loop_bodies_counted_once() else chunks * size, tokens, config.width)
    count = {"dpt": beit_dpt, "depth_anything": depth_anything}[name]
    expected = count(config, (side, side), attention)
    print(f"{preset} {side}x{side} chunk {size}: XLA {gflop(measured)} GFLOP, analytic {gflop(expected)}")
    assert relative(measured, expected) < FLOP_TOLERANCE, (gflop(measured), gflop(expected))
