#!/usr/bin/env python
"""The GPU goals in one run (issue 24 item 5), a section per process; `benchmarks/device_check.sh` runs them in
order with a time budget. Each section prints JSON lines (and appends them to WORK/rows.jsonl, which `summary`
reads):

    env              versions, devices, cuDNN, the CPU and its ISA flags, the modules beit_flax needs
    torch-reference  transformers' DPTForDepthEstimation for BEiT-L 512 with every weight perturbed (nothing
                     downloaded), saved as a hub folder; its fp32 output (TF32 off) and pure-bf16 output on one image
    flax             that folder converted; fp32 parity vs torch; bf16 with attention "auto" (cuDNN on a GPU) and
                     "xla": which attention the compiled program holds, parity vs torch fp32, compile time, batch-1
                     latency, batch-32 throughput; the attention kernel alone (cuDNN / XLA / torch SDPA vs an fp32
                     reference, outputs and gradients, with the relative-position bias and without one at an odd
                     token count)
    torch-speed      the same torch model (SDPA attention): pure bf16 eager, bf16 autocast, torch.compile (pure bf16)
                     at batch 32, eager batch-1 latency
    depth-anything   Depth Anything V2 ViT-L (random weights): bf16 (cuDNN) vs fp32 at 518 x 518 (1370 tokens) and
                     392 x 518 (1037: the padded cuDNN path), batch-32 throughput; transformers' model, pure bf16
    summary          the goals: batch 32 bf16 >= 2x the best torch path, batch 1 <= 4 ms, compile <= 60 s,
                     bf16 vs fp32 median relative difference <= 1e-2, fp32 parity; met / missed / not measured

`--tiny` runs every section on the tiny configs (CPU is fine: the cuDNN rows say "skipped"), for the test suite.
Rows that would overrun `--deadline` (epoch seconds) are skipped with a line saying so.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import flop_count
import numpy as np
from machine import cpu_name
from throughput import Prepared, row_stats

# before any section imports jax: torch shares the GPU in the flax section; compile times from scratch (no
# persistent cache)
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
os.environ.setdefault("BEIT_FLAX_CACHE_DIR", "off")

VARIANT = "dpt_beit_large_512"
DA_PRESET = "depth_anything_v2_large"
GOALS = {
    "flax_vs_best_torch_b32": (">=", 2.0),
    "flax_b1_ms": ("<=", 4.0),
    "compile_s": ("<=", 60.0),
    "bf16_vs_fp32_median_rel": ("<=", 1e-2),
    "fp32_vs_torch_max_over_max": ("<=", 1e-4),  # ~1e-5 on CPU (README); float32 at HIGHEST on the GPU too
}
CUDNN_MARK = "__cudnn$fmha"  # the fused-attention custom calls' targets in a compiled program


class Setup:
    """Sizes and counts of a run: the full one, or `--tiny` (tiny configs, batch 2 for 32, 2 timed calls)."""

    def __init__(self, tiny: bool, work: Path, deadline: float):
        self.tiny, self.work, self.deadline = tiny, work, deadline
        self.big_batch, self.iters, self.latency_iters = (2, 2, 3) if tiny else (32, 20, 100)
        self.rows = work / "rows.jsonl"

    def dpt_config(self):
        from beit_flax.models.dpt.config import PRESETS, TINY

        return TINY if self.tiny else PRESETS[VARIANT]

    def da_config(self):
        from beit_flax.models.depth_anything.config import PRESETS, TINY

        return TINY if self.tiny else PRESETS[DA_PRESET]

    def da_sizes(self) -> list[tuple[int, int]]:
        """An even and an odd token count (h*w + 1): the second runs cuDNN's padded path."""
        return [(42, 42), (56, 56)] if self.tiny else [(518, 518), (392, 518)]

    def left(self) -> float:
        return self.deadline - time.time()

    def emit(self, row: dict[str, Any]) -> None:
        line = json.dumps(row, default=str)
        print(line, flush=True)
        with self.rows.open("a") as out:
            out.write(line + "\n")

    def budget(self, section: str, what: str, needs_s: float) -> bool:
        """Whether `needs_s` seconds are left for `what`; if not, a line saying it was skipped."""
        if self.left() >= (1 if self.tiny else needs_s):
            return True
        self.emit({"section": section, "what": what, "skipped": f"time budget ({self.left():.0f} s left)"})
        return False


def compare(ours: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """max|d| / max|ref|; median and 99th percentile of |d| / |ref| over the pixels above 10 % of max|ref| (a ReLU
    leaves many near 0, where a relative difference means nothing)."""
    ours, reference = np.asarray(ours, np.float64), np.asarray(reference, np.float64)
    lit = np.abs(reference) > 0.1 * np.abs(reference).max()
    rel = np.abs(ours - reference)[lit] / np.abs(reference)[lit]
    return {
        "max_over_max": float(f"{np.abs(ours - reference).max() / np.abs(reference).max():.3g}"),
        "median_rel": float(f"{np.median(rel):.3g}"),
        "p99_rel": float(f"{np.percentile(rel, 99):.3g}"),
    }


def timed(step: Callable[[], Any], sync: Callable[[Any], Any], iters: int, warmup: int = 2) -> Prepared:
    prepared = Prepared(step, sync, None, dict)
    prepared.warm(warmup)
    for _ in range(iters):
        prepared.timed_call()
    return prepared


def latency(step: Callable[[], Any], sync: Callable[[Any], Any], iters: int) -> dict[str, float]:
    """Batch-1 latency: median of calls each waited for, and the mean of `iters` calls launched back to back."""
    synced = timed(step, sync, iters).times_s
    start = time.perf_counter()
    for _ in range(iters - 1):
        step()
    sync(step())
    return {
        "ms_synced_median": round(1e3 * statistics.median(synced), 3),
        "ms_synced_min": round(1e3 * min(synced), 3),
        "ms_pipelined_mean": round(1e3 * (time.perf_counter() - start) / iters, 3),
    }


# ------------------------------------------------------------------------------------------------------------- env


def section_env(setup: Setup) -> None:
    import importlib
    import importlib.metadata as metadata

    row: dict[str, Any] = {"section": "env", "python": platform.python_version(), "cpu": cpu_name()}
    flags = next((line for line in _read("/proc/cpuinfo").splitlines() if line.startswith("flags")), "")
    row["cpu_isa"] = sorted(f for f in flags.split() if f.startswith(("avx", "amx", "sse4", "fma")))
    versions = {}
    for name in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "torch", "transformers", "safetensors", "numpy"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    row["versions"] = versions
    needed = ("jax", "flax", "optax", "orbax.checkpoint", "safetensors", "msgpack", "PIL", "tqdm", "imageio")
    row["missing_modules"] = [m for m in (*needed, "torch", "transformers") if importlib.util.find_spec(m) is None]
    try:
        import jax

        import beit_flax  # noqa: F401  (the package imports from this checkout)

        row["jax_backend"] = jax.default_backend()
        row["jax_devices"] = [f"{d.platform}:{d.device_kind}" for d in jax.devices()]
        with contextlib.suppress(Exception):
            from jax._src.lib import cuda_versions

            row["jax_cudnn"] = cuda_versions.cudnn_get_version() if cuda_versions else None
    except Exception as err:
        row["jax_error"] = f"{type(err).__name__}: {err}"
    try:
        import torch

        row["torch_cuda"] = torch.version.cuda
        row["torch_cudnn"] = torch.backends.cudnn.version() if torch.cuda.is_available() else None
        row["torch_gpu"] = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    except Exception as err:
        row["torch_error"] = f"{type(err).__name__}: {err}"
    setup.emit(row)


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


# ------------------------------------------------------------------------------------------------------- torch


def torch_device():
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False  # the fp32 reference is fp32
    torch.backends.cudnn.allow_tf32 = False
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def section_torch_reference(setup: Setup) -> None:
    import torch

    from beit_flax.demo.torch_model import build_reference, random_images

    start = time.perf_counter()
    device = torch_device()
    config = setup.dpt_config()
    reference = build_reference(config, seed=0)
    reference.save_pretrained(setup.work / "hf")  # what the flax section converts, as a hub folder
    torch.save(reference.state_dict(), setup.work / "reference.pt")  # what torch-speed loads, by module names
    images = random_images(1, config.net_size, config.net_size, seed=0)
    np.save(setup.work / "images.npy", images.permute(0, 2, 3, 1).numpy())
    reference = reference.to(device)
    with torch.inference_mode():
        fp32 = reference(pixel_values=images.to(device)).predicted_depth.float().cpu().numpy()
        half = reference.to(torch.bfloat16)
        bf16 = half(pixel_values=images.to(device, torch.bfloat16)).predicted_depth.float().cpu().numpy()
    np.save(setup.work / "torch_fp32.npy", fp32)
    setup.emit(
        {
            "section": "torch-reference",
            "variant": "tiny" if setup.tiny else VARIANT,
            "device": str(device),
            "max_abs_fp32": float(np.abs(fp32).max()),
            "positive_fraction": float((fp32 > 0).mean()),
            "torch_bf16_vs_fp32": compare(bf16, fp32),
            "seconds": round(time.perf_counter() - start, 1),
        }
    )


def use_sdpa(model) -> str:
    """Switch a transformers model's attention to SDPA where it (or its backbone) has it; the backbone's choice."""
    for part in (model, getattr(model, "backbone", None)):
        with contextlib.suppress(Exception):
            part.set_attn_implementation("sdpa")
    config = getattr(getattr(model, "backbone", None), "config", model.config)
    return getattr(config, "_attn_implementation", "eager")


def sdpa_model(setup: Setup):
    """The perturbed reference read back (torch-reference saved its state dict), with SDPA attention if it has it."""
    import torch

    from beit_flax.demo.torch_model import build_model

    model = build_model(setup.dpt_config()).eval()
    model.load_state_dict(torch.load(setup.work / "reference.pt", weights_only=True))
    return model, use_sdpa(model)


def section_torch_speed(setup: Setup) -> None:
    import torch

    device = torch_device()
    model, attn = sdpa_model(setup)
    model = model.to(device, torch.bfloat16)
    sync = lambda out: torch.cuda.synchronize() if device.type == "cuda" else out
    side = setup.dpt_config().net_size
    gflop = flop_count.beit_dpt(setup.dpt_config(), (side, side)) / 1e9
    base = {"section": "torch-speed", "dtype": "bfloat16", "device": str(device), "attn_implementation": attn}

    def run(impl: str, batch: int, forward: Callable[[Any], Any], dtype: Any) -> None:
        images = torch.randn(batch, 3, side, side, device=device, dtype=dtype)
        step = lambda: forward(images)
        row = {**base, "impl": impl, "batch": batch}
        try:
            with torch.inference_mode():
                t0 = time.perf_counter()
                sync(step())  # torch.compile compiles here
                row["first_call_s"] = round(time.perf_counter() - t0, 2)
                if batch == 1:
                    row.update(latency(step, sync, setup.latency_iters))
                else:
                    prepared = timed(step, sync, setup.iters)
                    row.update(row_stats(prepared.times_s, prepared.cpu_s, batch, gflop))
        except Exception as err:  # e.g. out of memory, an inductor failure: say so, go on
            row["error"] = f"{type(err).__name__}: {str(err)[:300]}"
        setup.emit(row)
        if device.type == "cuda":
            torch.cuda.empty_cache()

    pure = lambda x: model(pixel_values=x).predicted_depth
    run("torch-eager", setup.big_batch, pure, torch.bfloat16)
    run("torch-eager", 1, pure, torch.bfloat16)
    float_model = None
    if setup.budget("torch-speed", "torch-autocast", 40):
        float_model = model.float()

        def autocast(x):
            with torch.autocast(device.type, dtype=torch.bfloat16):
                return float_model(pixel_values=x).predicted_depth

        run("torch-autocast", setup.big_batch, autocast, torch.float32)
        model = float_model.to(torch.bfloat16)
    if setup.budget("torch-speed", "torch-compile", 120):
        compiled = torch.compile(model, dynamic=False, backend="eager" if setup.tiny else "inductor")
        run("torch-compile", setup.big_batch, lambda x: compiled(pixel_values=x).predicted_depth, torch.bfloat16)


# --------------------------------------------------------------------------------------------------------- flax


def flax_params(setup: Setup):
    """The torch reference's weights converted (`torch_to_flax`), and the model."""
    from beit_flax.convert import open_checkpoint, torch_to_flax
    from beit_flax.models import registry

    converted = torch_to_flax(open_checkpoint(setup.work / "hf"))
    return registry.of_config(converted.config), converted.config, converted.params


def placed(model, params) -> Any:
    """`params` on the device as `beit-depth predict` places them (`Batcher`): a 16-bit model's kernels stored in its
    dtype (`models/precast.py`; the same outputs bit for bit), so the timings are the product's."""
    import jax

    from beit_flax.models.precast import precast

    return jax.device_put(precast(model, params))


def compile_apply(model, params, images) -> tuple[Any, float, int]:
    """(compiled apply, seconds to lower and compile, fused cuDNN attention calls in the program)."""
    import jax

    start = time.perf_counter()
    compiled = jax.jit(lambda p, x: model.apply({"params": p}, x)).lower(params, images).compile()
    seconds = time.perf_counter() - start
    text = ""
    with contextlib.suppress(Exception):
        text = compiled.as_text()
    return compiled, round(seconds, 2), text.count(CUDNN_MARK)


def section_flax(setup: Setup) -> None:
    import jax

    start = time.perf_counter()
    family, config, host_params = flax_params(setup)
    params = jax.device_put(host_params)
    device = jax.devices()[0]
    base = {"section": "flax", "device": f"{device.platform}:{device.device_kind}", "jax": jax.__version__}
    images = np.load(setup.work / "images.npy")
    torch_fp32 = np.load(setup.work / "torch_fp32.npy")
    setup.emit({**base, "what": "convert", "seconds": round(time.perf_counter() - start, 1)})

    fp32, seconds, _ = compile_apply(family.build(config), params, images)
    flax_fp32 = np.asarray(fp32(params, images))
    parity = {"compile_s": seconds, "vs_torch_fp32": compare(flax_fp32, torch_fp32)}
    setup.emit({**base, "what": "parity", "dtype": "float32", **parity})
    del fp32

    side = config.net_size
    batch = jax.device_put(np.random.default_rng(1).standard_normal((setup.big_batch, side, side, 3), np.float32))
    gflop = flop_count.beit_dpt(config, (side, side)) / 1e9
    for attention in ("auto", "xla"):
        model = family.build(config, dtype="bfloat16", attention=attention)
        row = {**base, "what": "bf16", "attention": attention, "batch": 1}
        if setup.budget("flax", f"bf16 {attention} batch 1", 60):
            setup.emit(guarded(row, flax_one, setup, model, params, images, (torch_fp32, flax_fp32)))
        if attention == "auto" and jax.default_backend() != "gpu":
            setup.emit({**base, "what": "bf16", "attention": "cudnn", "skipped": "cuDNN needs an NVIDIA GPU"})
        row = {**row, "batch": setup.big_batch}
        if setup.budget("flax", f"bf16 {attention} batch {setup.big_batch}", 60):
            setup.emit(guarded(row, flax_throughput, setup, model, params, batch, gflop))
    if setup.budget("flax", "attention kernels", 20):
        attention_kernels(setup, config, base)


def guarded(row: dict[str, Any], measure: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    """`row` with `measure(*args)`'s fields, or with the error it raised (out of memory, a refused kernel)."""
    try:
        return {**row, **measure(*args)}
    except Exception as err:
        return {**row, "error": f"{type(err).__name__}: {str(err)[:300]}"}


def flax_one(setup: Setup, model, params, images, references: tuple[np.ndarray, np.ndarray]) -> dict[str, Any]:
    """Batch 1: compile time, cuDNN calls, the output vs torch fp32 and vs Flax fp32, latency."""
    import jax

    params = placed(model, params)
    one, compile_s, cudnn_calls = compile_apply(model, params, images)
    ours = np.asarray(one(params, images))
    row = {"compile_s": compile_s, "cudnn_calls": cudnn_calls}
    row["vs_torch_fp32"], row["vs_flax_fp32"] = (compare(ours, reference) for reference in references)
    return {**row, **latency(lambda: one(params, images), jax.block_until_ready, setup.latency_iters)}


def flax_throughput(setup: Setup, model, params, batch, gflop: float) -> dict[str, Any]:
    """A batch: compile time, cuDNN calls, throughput (`throughput.row_stats`; TFLOP/s from `gflop` per image, the
    analytic count), and XLA's own count per image (it counts a loop's body once: the chunked XLA attention less)."""
    import jax

    params = placed(model, params)
    program, compile_s, cudnn_calls = compile_apply(model, params, batch)
    prepared = timed(lambda: program(params, batch), jax.block_until_ready, setup.iters)
    images = batch.shape[0]
    xla_gflop = None
    with contextlib.suppress(Exception):
        cost = program.cost_analysis()
        xla_gflop = (cost[0] if isinstance(cost, list) else cost)["flops"] / 1e9 / images
    row = {"compile_s": compile_s, "cudnn_calls": cudnn_calls, "gflop_per_img": round(gflop, 3)}
    row["xla_gflop_per_img"] = xla_gflop and round(xla_gflop, 3)
    return {**row, **row_stats(prepared.times_s, prepared.cpu_s, images, gflop)}


def attention_kernels(setup: Setup, config, base: dict[str, Any]) -> None:
    """One block's attention at the model's token count (BEiT-L 512: 1025 tokens, 16 heads of 64) with a random
    (heads, N, N) bias, and without one (DINOv2's): cuDNN (bf16), XLA (bf16), torch SDPA (bf16, fp32) against XLA
    in float32 at HIGHEST, max|d| / max|ref|; for cuDNN and XLA bf16 also the gradients of q, k, v."""
    import jax
    import jax.numpy as jnp

    from beit_flax.models.dpt.attention import cudnn_attention, xla_attention

    heads, d = config.num_heads, config.width // config.num_heads
    grid = config.net_size // config.patch_size
    n = grid * grid + 1  # odd (1025, tiny 17): both cuDNN paths pad a token (`cudnn_inputs`, `cudnn_unbiased_inputs`)
    rng = np.random.default_rng(0)
    weights = np.sin(np.arange(n, dtype=np.float32))[None, :, None, None]
    for with_bias in (True, False):
        q, k, v = (rng.standard_normal((2, n, heads, d)).astype(np.float32) for _ in range(3))
        bias = rng.standard_normal((heads, n, n)).astype(np.float32) if with_bias else None
        loss = lambda f, bias=bias: lambda *qkv: jnp.sum(f(*qkv, bias).astype(jnp.float32) * weights)
        with jax.default_matmul_precision("highest"):
            reference = np.asarray(jax.jit(xla_attention)(q, k, v, bias))
            grads_ref = jax.jit(jax.grad(loss(xla_attention), (0, 1, 2)))(q, k, v)
        half = [jnp.asarray(t, jnp.bfloat16) for t in (q, k, v)]
        row = {**base, "what": "attention kernel", "tokens": n, "heads": heads, "head_dim": d, "bias": with_bias}
        for name, f in (("cudnn_bf16", cudnn_attention), ("xla_bf16", xla_attention)):
            if name.startswith("cudnn") and jax.default_backend() != "gpu":
                row[name] = "skipped: cuDNN needs an NVIDIA GPU"
                continue
            try:
                out = np.asarray(jax.jit(f)(*half, bias), np.float32)
                grads = jax.jit(jax.grad(loss(f), (0, 1, 2)))(*half)
                row[name] = {"out": _rel(out, reference), "grad_q_k_v": [_rel(g, r) for g, r in zip(grads, grads_ref)]}
            except Exception as err:
                row[name] = f"error: {type(err).__name__}: {str(err)[:200]}"
        row.update(_torch_sdpa(q, k, v, bias, reference))
        setup.emit(row)


def _rel(ours: Any, reference: Any) -> float:
    ours, reference = np.asarray(ours, np.float64), np.asarray(reference, np.float64)
    return float(f"{np.abs(ours - reference).max() / np.abs(reference).max():.3g}")


def _torch_sdpa(q, k, v, bias, reference) -> dict[str, Any]:
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        return {}
    device = torch_device()
    heads_first = lambda t: torch.from_numpy(np.ascontiguousarray(np.transpose(t, (0, 2, 1, 3))))  # (B, H, N, d)
    out = {}
    for name, dtype in (("torch_sdpa_bf16", torch.bfloat16), ("torch_sdpa_fp32", torch.float32)):
        tq, tk, tv = (heads_first(t).to(device, dtype) for t in (q, k, v))
        mask = None if bias is None else torch.from_numpy(bias)[None].to(device, dtype)
        try:
            with torch.inference_mode():
                result = F.scaled_dot_product_attention(tq, tk, tv, attn_mask=mask)
            out[name] = {"out": _rel(result.float().cpu().numpy().transpose(0, 2, 1, 3), reference)}
        except Exception as err:
            out[name] = f"error: {type(err).__name__}: {str(err)[:200]}"
    return out


# ------------------------------------------------------------------------------------------------ depth anything


def section_depth_anything(setup: Setup) -> None:
    import jax

    from beit_flax.models import registry
    from beit_flax.params import init_params

    config = setup.da_config()
    family = registry.of_config(config)
    params = jax.device_put(init_params(config, 0, spread=0.02))
    device = jax.devices()[0]
    base = {"section": "depth-anything", "model": "tiny" if setup.tiny else DA_PRESET, "device": device.device_kind}
    rng = np.random.default_rng(2)
    for hw in setup.da_sizes():
        if not setup.budget("depth-anything", f"parity {hw}", 60):
            break
        images = rng.standard_normal((1, *hw, 3)).astype(np.float32)
        tokens = (hw[0] // config.patch_size) * (hw[1] // config.patch_size) + 1
        row = {**base, "what": "bf16 auto vs fp32", "size": f"{hw[0]}x{hw[1]}", "tokens": tokens}
        setup.emit(guarded(row, da_parity, family, config, params, images))
    side = config.net_size
    batch = jax.device_put(rng.standard_normal((setup.big_batch, side, side, 3)).astype(np.float32))
    for attention in ("auto", "xla"):
        if not setup.budget("depth-anything", f"bf16 {attention} batch {setup.big_batch}", 45):
            break
        row = {**base, "what": "bf16 throughput", "attention": attention, "batch": setup.big_batch}
        model = family.build(config, dtype="bfloat16", attention=attention)
        gflop = flop_count.depth_anything(config, (side, side)) / 1e9
        setup.emit(guarded(row, flax_throughput, setup, model, params, batch, gflop))
    if setup.budget("depth-anything", "transformers bf16", 40):
        depth_anything_torch(setup, family, config, base)


def da_parity(family, config, params, images) -> dict[str, Any]:
    """bf16 ("auto": cuDNN on a GPU) against fp32 (XLA) on one image."""
    fp32, _, _ = compile_apply(family.build(config), params, images)
    model = family.build(config, dtype="bfloat16")
    half_params = placed(model, params)
    half, compile_s, cudnn_calls = compile_apply(model, half_params, images)
    reference = np.asarray(fp32(params, images))
    row = {"compile_s": compile_s, "cudnn_calls": cudnn_calls, "positive_fraction": float((reference > 0).mean())}
    return {**row, "vs_fp32": compare(np.asarray(half(half_params, images)), reference)}


def depth_anything_torch(setup: Setup, family, config, base: dict[str, Any]) -> None:
    """transformers' DepthAnythingForDepthEstimation from the family's config.json (random init), SDPA, pure bf16."""
    import torch
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation

    device = torch_device()
    row = {**base, "what": "bf16 throughput", "impl": "torch-eager", "batch": setup.big_batch}
    try:
        hf = DepthAnythingConfig.from_dict(family.checkpoints.hf_config(config))
        model = DepthAnythingForDepthEstimation(hf).eval()
        row["attn_implementation"] = use_sdpa(model)
        model = model.to(device, torch.bfloat16)
        images = torch.randn(setup.big_batch, 3, config.net_size, config.net_size, device=device, dtype=torch.bfloat16)
        sync = lambda out: torch.cuda.synchronize() if device.type == "cuda" else out
        with torch.inference_mode():
            prepared = timed(lambda: model(pixel_values=images).predicted_depth, sync, setup.iters)
        gflop = flop_count.depth_anything(config, (config.net_size,) * 2) / 1e9
        row.update(row_stats(prepared.times_s, prepared.cpu_s, setup.big_batch, gflop))
    except Exception as err:
        row["error"] = f"{type(err).__name__}: {str(err)[:300]}"
    setup.emit(row)


# ------------------------------------------------------------------------------------------------------- summary


def section_summary(setup: Setup) -> None:
    rows = [json.loads(line) for line in _read(str(setup.rows)).splitlines() if line.strip()]
    ok = lambda r: "error" not in r and "skipped" not in r
    flax = [r for r in rows if r.get("section") == "flax" and r.get("what") == "bf16" and ok(r)]
    torch_big = [r for r in rows if r.get("section") == "torch-speed" and r.get("batch", 1) > 1 and ok(r)]
    pick = lambda batch, attention: next((r for r in flax if r["batch"] == batch and r["attention"] == attention), None)
    flax_big, flax_one = pick(setup.big_batch, "auto"), pick(1, "auto")
    best_torch = max(torch_big, key=lambda r: r["img_per_s"], default=None)
    fp32 = next((r for r in rows if r.get("what") == "parity" and ok(r)), None)
    measured = {
        "flax_vs_best_torch_b32": round(flax_big["img_per_s"] / best_torch["img_per_s"], 3)
        if flax_big and best_torch
        else None,
        "flax_b1_ms": flax_one["ms_synced_median"] if flax_one else None,
        "compile_s": max((r["compile_s"] for r in (flax_big, flax_one) if r), default=None),
        "bf16_vs_fp32_median_rel": flax_one["vs_flax_fp32"]["median_rel"] if flax_one else None,
        "fp32_vs_torch_max_over_max": fp32["vs_torch_fp32"]["max_over_max"] if fp32 else None,
    }
    verdict = {}
    for name, (op, goal) in GOALS.items():
        value = measured[name]
        met = value is not None and (value >= goal if op == ">=" else value <= goal)
        verdict[name] = "not measured" if value is None else ("met" if met else "missed")
    setup.emit(
        {
            "summary": True,
            "tiny": setup.tiny,
            "goals": {name: f"{op} {goal:g}" for name, (op, goal) in GOALS.items()},
            "measured": measured,
            "verdict": verdict,
            "cudnn_calls_in_bf16_auto": flax_big.get("cudnn_calls") if flax_big else None,
            "best_torch": f"{best_torch['impl']} ({best_torch['attn_implementation']})" if best_torch else None,
            "error_rows": sum("error" in r for r in rows),
            "skipped_rows": sum("skipped" in r for r in rows),
        }
    )


SECTIONS = {
    "env": section_env,
    "torch-reference": section_torch_reference,
    "flax": section_flax,
    "torch-speed": section_torch_speed,
    "depth-anything": section_depth_anything,
    "summary": section_summary,
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("section", choices=SECTIONS)
    ap.add_argument("--work", type=Path, required=True, help="folder shared by the sections (checkpoint, rows)")
    ap.add_argument("--tiny", action="store_true", help="tiny configs, few calls: a check of the script itself")
    ap.add_argument("--deadline", type=float, default=None, help="epoch seconds after which optional rows skip")
    args = ap.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    setup = Setup(args.tiny, args.work, args.deadline or time.time() + 3600)
    try:
        SECTIONS[args.section](setup)
    except Exception as err:  # one line for the log; the next section still runs
        setup.emit({"section": args.section, "error": f"{type(err).__name__}: {str(err)[:500]}"})
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
