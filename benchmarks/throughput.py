#!/usr/bin/env python
"""Throughput of the jitted Flax BEiT-DPT against transformers' DPTForDepthEstimation, same device, one run.

    python benchmarks/throughput.py --variant dpt_beit_base_384 --batch 1 --dtype float32
    python benchmarks/throughput.py --variant dpt_beit_large_512 --batch 1 8 32 --dtype float32 bfloat16 --iters 20

Prints one JSON line per measurement (see benchmarks/README.md for the fields), then one summary line per
(variant, size, batch, dtype) group. All torch measurements run before all Flax measurements, so every Flax row can
carry `vs_best_torch` when printed (and, on a GPU, torch's cached memory is emptied before JAX allocates).
`--interleave` instead times the implementations of a group round-robin, for machines whose load changes.

Parameters are random (Flax: `beit_flax.params.init_params` with every leaf spread; torch: the model's own
transformers init) and images are random normal: the numbers are for speed only (`--accuracy` adds how far 16-bit
rows are from float32 on the same random weights). Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# JAX would otherwise grab 75% of the GPU up front and leave nothing for torch in the same process.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import contextlib

import numpy as np
from machine import cpu_name  # benchmarks/machine.py (this script's folder is on sys.path)

from beit_flax.models.dpt.attention import ATTENTION_IMPLS
from beit_flax.models.precision import COMPUTE_DTYPES

GFLOP_PER_IMAGE = {"dpt_beit_large_512": 963.0, "dpt_beit_large_384": 516.0, "dpt_beit_base_384": 224.0}
"""torch's flop counter on transformers' DPTForDepthEstimation, one image at the variant's net size."""
VARIANTS = tuple(GFLOP_PER_IMAGE)  # the released presets (beit_flax.PRESETS), each with its FLOP anchor
IMPLS = ("flax", "torch-eager", "torch-autocast", "torch-compile", "onnxruntime")


# ----------------------------------------------------------------------------------------------------------- helpers


def parse_size(text: str) -> tuple[int, int]:
    """'512' -> (512, 512); '384x512' -> (384, 512) (H x W)."""
    parts = text.lower().split("x")
    if len(parts) not in (1, 2) or not all(p.isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"size must be N or HxW, got {text!r}")
    h, w = (int(parts[0]), int(parts[-1]))
    if h <= 0 or w <= 0 or h % 16 or w % 16:
        raise argparse.ArgumentTypeError(f"H and W must be positive multiples of 16, got {text!r}")
    return h, w


def size_str(hw: tuple[int, int]) -> str:
    return f"{hw[0]}x{hw[1]}"


def gflop_per_image(variant: str, hw: tuple[int, int], net: int) -> tuple[float, str]:
    """The variant's anchor, scaled by the pixel-count ratio for other sizes (approximate: attention is quadratic in
    the token count, so this under-counts larger and over-counts smaller inputs by a few percent)."""
    ratio = hw[0] * hw[1] / (net * net)
    if ratio == 1:
        return GFLOP_PER_IMAGE[variant], "anchor"
    return GFLOP_PER_IMAGE[variant] * ratio, "anchor*pixel_ratio(approx)"


def n_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def max_rss_gib() -> float:
    """Process peak RSS so far (cumulative over the whole run: every earlier measurement counts)."""
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return kib / 2**20


class Prepared:
    """One measurement ready to run: `step()` launches a forward, `sync(out)` waits for it, `finish()` returns the
    impl-specific fields (memory, device, versions) once the timed calls are done."""

    def __init__(
        self,
        step: Callable[[], Any],
        sync: Callable[[Any], Any],
        compile_s: float | None,
        finish: Callable[[], dict[str, Any]],
    ):
        self.step, self.sync, self.compile_s, self.finish = step, sync, compile_s, finish
        self.first_call_s: float | None = None
        self.times_s: list[float] = []
        self.cpu_s: list[float] = []

    def warm(self, warmup: int) -> None:
        """First call (after compilation, if any), then `warmup - 1` more untimed calls."""
        t0 = time.perf_counter()
        self.sync(self.step())
        self.first_call_s = time.perf_counter() - t0
        for _ in range(max(0, warmup - 1)):
            self.sync(self.step())

    def timed_call(self) -> None:
        c0, t0 = time.process_time(), time.perf_counter()
        self.sync(self.step())
        self.times_s.append(time.perf_counter() - t0)
        self.cpu_s.append(time.process_time() - c0)


def row_stats(times: list[float], cpu_s: list[float], batch: int, gflop_img: float) -> dict[str, Any]:
    med = statistics.median(times)
    return {
        "img_per_s": round(batch / med, 4),
        "ms_per_batch": round(1e3 * med, 3),
        "ms_min": round(1e3 * min(times), 3),
        "ms_max": round(1e3 * max(times), 3),
        "iters": len(times),
        "tflops": round(gflop_img * batch / med / 1e3, 4),
        # CPU time of the whole process per call (all threads): on a shared CPU it is far less load-sensitive than
        # the wall time; on a GPU it is just the host's launch / wait overhead.
        "cpu_ms_per_batch": round(1e3 * statistics.median(cpu_s), 3),
    }


# ------------------------------------------------------------------------------------------------------------ torch


class TorchBench:
    def __init__(self, config, device: str, threads: int, tf32: bool):
        import torch

        from beit_flax.demo.torch_model import build_model

        self.torch = torch
        torch.set_num_threads(threads)
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
        self.dev = torch.device("cuda" if device == "gpu" else "cpu")
        torch.manual_seed(0)
        self.model = build_model(config).float().eval().to(self.dev)
        self.cast_models: dict[Any, Any] = {}
        self.compiled: dict[Any, Any] = {}
        if device == "gpu":
            self.device_name = torch.cuda.get_device_name(self.dev)
        else:
            self.device_name = f"cpu: {cpu_name()} ({torch.get_num_threads()} threads)"

    def sync(self, out):
        if self.dev.type == "cuda":
            self.torch.cuda.synchronize(self.dev)
        return out

    def prepare(self, impl: str, dtype: str, batch: int, hw: tuple[int, int]) -> Prepared:
        torch = self.torch
        tdtype = getattr(torch, dtype)
        gen = torch.Generator().manual_seed(1)
        images = torch.randn((batch, 3, *hw), generator=gen).to(self.dev)
        autocast = impl == "torch-autocast" or (impl == "torch-compile" and dtype != "float32")
        mode = "fp32" if dtype == "float32" else (f"autocast-{dtype}" if autocast else f"pure-{dtype}")
        want_dtype = torch.float32 if autocast or dtype == "float32" else tdtype
        images = images.to(want_dtype)

        if want_dtype == torch.float32:
            model = self.model
        else:  # torch-eager in bf16/fp16: a cast copy of the weights (kept apart for --interleave)
            if want_dtype not in self.cast_models:
                self.cast_models[want_dtype] = copy.deepcopy(self.model).to(want_dtype)
            model = self.cast_models[want_dtype]
        if impl == "torch-compile":
            # one specialised graph per (shape, dtype, autocast); dynamo's recompile limit is raised so that many
            # sizes / batches in one run do not silently fall back to eager
            for name in ("cache_size_limit", "recompile_limit"):
                if hasattr(torch._dynamo.config, name):
                    setattr(torch._dynamo.config, name, max(64, getattr(torch._dynamo.config, name)))
            if want_dtype not in self.compiled:
                self.compiled[want_dtype] = torch.compile(model, dynamic=False)
            model = self.compiled[want_dtype]

        def step():
            with torch.inference_mode(), torch.autocast(self.dev.type, dtype=tdtype, enabled=autocast):
                return model(pixel_values=images).predicted_depth

        if self.dev.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.dev)
        compile_s = None
        if impl == "torch-compile":
            # compile = the first call (dynamo trace + inductor codegen); recompiles for each new shape / dtype
            t0 = time.perf_counter()
            self.sync(step())
            compile_s = round(time.perf_counter() - t0, 3)

        def finish() -> dict[str, Any]:
            if self.dev.type == "cuda":
                peak = torch.cuda.max_memory_allocated(self.dev) / 2**30
                note = "torch.cuda.max_memory_allocated since this measurement began"
            else:
                peak, note = max_rss_gib(), "process max RSS, cumulative over the run"
            return {
                "peak_mem_gib": round(peak, 3),
                "peak_mem_note": note,
                "device": self.device_name,
                "torch_mode": mode,
                "torch_version": torch.__version__,
                "torch_threads": torch.get_num_threads(),
                "tf32": bool(torch.backends.cuda.matmul.allow_tf32) if self.dev.type == "cuda" else None,
            }

        return Prepared(step, self.sync, compile_s, finish)

    def close(self):
        self.model = None
        self.cast_models.clear()
        self.compiled.clear()
        gc.collect()
        if self.dev.type == "cuda":
            self.torch.cuda.empty_cache()


# ------------------------------------------------------------------------------------------------------------- flax


class FlaxBench:
    def __init__(
        self,
        config,
        device: str,
        matmul_precision: str | None,
        scan: bool = False,
        attention: str = "auto",
        accuracy: bool = False,
    ):
        import jax

        from beit_flax.params import init_params

        if matmul_precision:
            jax.config.update("jax_default_matmul_precision", matmul_precision)
        self.jax = jax
        self.config = config
        backend = "gpu" if device == "gpu" else "cpu"
        self.device = jax.devices(backend)[0]
        # every leaf random (spread), so the accuracy rows exercise the tables, norms and biases too
        self.params = jax.device_put(init_params(config, spread=0.02), self.device)
        self.device_kind = self.device.device_kind
        self.device_name = f"cpu: {cpu_name()} ({n_cores()} cores)" if backend == "cpu" else self.device_kind
        self.scan, self.attention, self.accuracy = scan, attention, accuracy
        self.float32_outputs: dict[tuple, np.ndarray] = {}  # images' shape -> float32 output, for --accuracy

    def prepare(self, impl: str, dtype: str, batch: int, hw: tuple[int, int]) -> Prepared:
        jax = self.jax
        from beit_flax.models.dpt.dpt import DPT
        from beit_flax.models.precast import precast

        model = DPT(self.config, dtype=dtype, scan=self.scan, attention=self.attention)
        images = np.random.default_rng(1).standard_normal((batch, *hw, 3), dtype=np.float32)
        images = jax.device_put(images, self.device)
        # placed as `beit-depth predict` places them: a 16-bit model's kernels in its dtype (`models/precast.py`)
        params = jax.device_put(precast(model, self.params), self.device)
        t0 = time.perf_counter()
        compiled = jax.jit(lambda p, x: model.apply({"params": p}, x)).lower(params, images).compile()
        compile_s = round(time.perf_counter() - t0, 3)
        half = self.accuracy and dtype != "float32"  # the float32 row would compare the model with itself
        accuracy = self.accuracy_row(np.asarray(compiled(params, images)), images) if half else {}
        xla_gflop = None
        try:  # best effort, backend dependent
            cost = compiled.cost_analysis()
            cost = cost[0] if isinstance(cost, (list, tuple)) else cost
            xla_gflop = round(float(cost["flops"]) / 1e9 / batch, 2)
        except Exception:
            pass

        def finish() -> dict[str, Any]:
            stats = None
            with contextlib.suppress(Exception):
                stats = self.device.memory_stats()
            if stats and "peak_bytes_in_use" in stats:
                peak, note = stats["peak_bytes_in_use"] / 2**30, "jax peak_bytes_in_use, cumulative over the run"
            else:
                peak, note = max_rss_gib(), "process max RSS, cumulative over the run (includes any torch rows)"
            return {
                "peak_mem_gib": round(peak, 3),
                "peak_mem_note": note,
                "device": self.device_name,
                "jax_device_kind": self.device_kind,
                "jax_version": jax.__version__,
                "xla_gflop_per_img": xla_gflop,
                "scan": self.scan,
                "attention": self.attention,
                "matmul_precision": jax.config.jax_default_matmul_precision
                or ("highest (model default for float32)" if dtype == "float32" else "default"),
                **accuracy,
            }

        return Prepared(lambda: compiled(params, images), jax.block_until_ready, compile_s, finish)

    def accuracy_row(self, ours: np.ndarray, images) -> dict[str, Any]:
        """Median / 99th-percentile pointwise relative difference of a 16-bit output `ours` to the float32 model on
        the same input, over the pixels above 10% of the float32 map's max (the final ReLU leaves many near 0, where
        relative error means nothing). The random weights are well-scaled (kernels N(0, 1/fan_in)), not trained."""
        from beit_flax.models.dpt.dpt import DPT

        if images.shape not in self.float32_outputs:
            reference = DPT(self.config, scan=self.scan, attention=self.attention)
            self.float32_outputs[images.shape] = np.asarray(
                self.jax.jit(reference.apply)({"params": self.params}, images)
            )
        full = self.float32_outputs[images.shape]
        lit = full > 0.1 * full.max()
        relative = np.abs(ours - full)[lit] / full[lit]
        return {
            "vs_float32_median_rel": float(f"{np.median(relative):.3g}"),
            "vs_float32_p99_rel": float(f"{np.percentile(relative, 99):.3g}"),
            "vs_float32_max_over_max": float(f"{np.abs(ours - full).max() / np.abs(full).max():.3g}"),
        }


# ------------------------------------------------------------------------------------------------------ onnxruntime


class OrtBench:
    """Our ONNX export (`beit_flax.export.export_onnx`, dynamic batch, one per size) in onnxruntime: the CPU provider,
    CUDA first on a GPU where onnxruntime has it. Same random params as the Flax rows (`init_params`, spread 0.02)."""

    def __init__(self, config, device: str, threads: int):
        import onnxruntime as ort

        from beit_flax.params import init_params

        self.ort, self.config, self.threads = ort, config, threads
        self.params = init_params(config, spread=0.02)
        gpu = device == "gpu" and "CUDAExecutionProvider" in ort.get_available_providers()
        self.providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if gpu else ["CPUExecutionProvider"]
        self.device_name = "gpu: onnxruntime CUDA provider" if gpu else f"cpu: {cpu_name()} ({threads} threads)"
        self.sessions: dict[tuple[int, int], tuple[Any, float, int]] = {}  # size -> (session, export + load s, bytes)

    def prepare(self, impl: str, dtype: str, batch: int, hw: tuple[int, int]) -> Prepared:
        from beit_flax.export import export_onnx
        from beit_flax.models.dpt.dpt import DPT

        if hw not in self.sessions:
            t0 = time.perf_counter()
            data = export_onnx(DPT(self.config), self.params, hw)
            options = self.ort.SessionOptions()
            options.intra_op_num_threads = self.threads
            session = self.ort.InferenceSession(data, options, providers=self.providers)
            self.sessions[hw] = (session, round(time.perf_counter() - t0, 3), len(data))
        session, setup_s, nbytes = self.sessions[hw]
        images = np.random.default_rng(1).standard_normal((batch, *hw, 3), dtype=np.float32)

        def finish() -> dict[str, Any]:
            return {
                "peak_mem_gib": round(max_rss_gib(), 3),
                "device": self.device_name,
                "peak_mem_note": "process max RSS, cumulative over the run",
                "ort_version": self.ort.__version__,
                "ort_providers": session.get_providers(),
                "onnx_mib": round(nbytes / 2**20, 1),
                "compile_note": "export to ONNX + session creation, once per size",
            }

        return Prepared(lambda: session.run(None, {"images": images}), lambda out: out, setup_s, finish)

    def close(self):
        self.sessions.clear()
        gc.collect()


# ------------------------------------------------------------------------------------------------------------- main


def default_impls(device: str, dtype: str) -> list[str]:
    if device == "gpu":
        torch_impls = (
            ["torch-eager", "torch-compile"]
            if dtype == "float32"
            else ["torch-eager", "torch-autocast", "torch-compile"]
        )
    else:
        torch_impls = ["torch-eager"] if dtype == "float32" else ["torch-autocast"]
    import importlib.util

    ort = ["onnxruntime"] if dtype == "float32" and importlib.util.find_spec("jax2onnx") else []  # the exporter
    return ["flax", *torch_impls, *ort]


def impl_makes_sense(impl: str, dtype: str, device: str) -> str | None:
    """None if `impl` can run in `dtype` on `device`, else the reason it is skipped."""
    if impl == "onnxruntime" and dtype != "float32":
        return "the ONNX export is float32 only"
    if impl == "torch-autocast" and dtype == "float32":
        return "autocast to float32 is plain eager fp32 (use torch-eager)"
    if device == "cpu" and impl == "torch-eager" and dtype == "float16":
        return "pure float16 torch on CPU is not supported for every op (use torch-autocast)"
    return None


def detect_device(requested: str) -> str:
    if requested != "auto":
        return requested
    try:
        import jax

        if jax.default_backend() == "gpu":
            return "gpu"
    except Exception:
        pass
    return "cpu"


def emit(row: dict[str, Any]) -> None:
    print(json.dumps(row), flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--variant", choices=VARIANTS, default="dpt_beit_large_512")
    ap.add_argument(
        "--size",
        type=parse_size,
        nargs="+",
        default=None,
        help="N or HxW, one or more (default: the variant's net size)",
    )
    ap.add_argument("--batch", type=int, nargs="+", default=[1])
    ap.add_argument("--dtype", choices=COMPUTE_DTYPES, nargs="+", default=["float32"])
    ap.add_argument(
        "--impl",
        choices=IMPLS,
        nargs="+",
        default=None,
        help="default: flax + torch-eager (fp32) / torch-autocast (bf16, fp16); on GPU also torch-compile "
        "and pure-dtype torch-eager",
    )
    ap.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument(
        "--interleave",
        action="store_true",
        help="per group, warm every impl up, then time them round-robin (one call each in turn), so a "
        "shared machine's changing load hits all impls alike",
    )
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: the core count)")
    ap.add_argument(
        "--torch-tf32",
        action="store_true",
        help="allow TF32 in torch fp32 matmuls/convs on GPU (off by default, torch's own default)",
    )
    ap.add_argument(
        "--jax-matmul-precision",
        default=None,
        help="jax_default_matmul_precision for the Flax rows (default: the model's policy, full float32 "
        "for float32 compute; e.g. tensorfloat32 to allow TF32 on GPU)",
    )
    ap.add_argument("--scan", action="store_true", help="Flax: the encoder as nn.scan loops (DPT(scan=True))")
    ap.add_argument(
        "--attention",
        choices=ATTENTION_IMPLS,
        default="auto",
        help="Flax: the attention implementation (DPT(attention=...))",
    )
    ap.add_argument(
        "--accuracy",
        action="store_true",
        help="Flax rows in 16-bit dtypes also report their difference to the float32 model (one more "
        "compile and call per shape)",
    )
    args = ap.parse_args(argv)
    if args.iters < 1 or args.warmup < 1 or any(b < 1 for b in args.batch):
        ap.error("--iters, --warmup and --batch must be >= 1")

    device = detect_device(args.device)
    from beit_flax.models.dpt.config import PRESETS

    config = PRESETS[args.variant]
    net = config.net_size
    sizes = args.size or [(net, net)]
    threads = args.threads or n_cores()

    groups = [(hw, b, dt) for hw in sizes for b in args.batch for dt in args.dtype]
    plan: dict[tuple, list[str]] = {}
    for hw, b, dt in groups:
        chosen = []
        for impl in args.impl or default_impls(device, dt):
            why = impl_makes_sense(impl, dt, device)
            if why:
                emit(
                    {
                        "impl": impl,
                        "variant": args.variant,
                        "size": size_str(hw),
                        "batch": b,
                        "dtype": dt,
                        "skipped": why,
                    }
                )
            else:
                chosen.append(impl)
        plan[(hw, b, dt)] = chosen
    results: dict[tuple, list[dict]] = {g: [] for g in groups}

    def base_row(impl, hw, b, dt) -> dict[str, Any]:
        return {"impl": impl, "variant": args.variant, "size": size_str(hw), "batch": b, "dtype": dt}

    def report(impl, hw, b, dt, prep: Prepared, load_start: float) -> None:
        gflop_img, flop_src = gflop_per_image(args.variant, hw, net)
        row = base_row(impl, hw, b, dt)
        row.update(row_stats(prep.times_s, prep.cpu_s, b, gflop_img))
        extra = prep.finish()
        row.update(
            {
                "compile_s": prep.compile_s,
                "first_call_s": round(prep.first_call_s, 3),
                "peak_mem_gib": extra.pop("peak_mem_gib"),
                "gflop_per_img": round(gflop_img, 1),
                "flops_source": flop_src,
                "device": extra.pop("device"),
                "warmup": args.warmup,
                "interleaved": args.interleave,
                "loadavg_1m": [round(load_start, 2), round(os.getloadavg()[0], 2)],
            }
        )
        row.update(extra)
        results[(hw, b, dt)].append(row)
        if impl == "flax":
            torch_rows = [r for r in results[(hw, b, dt)] if r["impl"].startswith("torch")]
            best = max(torch_rows, key=lambda r: r["img_per_s"], default=None)
            row["vs_best_torch"] = round(row["img_per_s"] / best["img_per_s"], 3) if best else None
            row["best_torch_impl"] = f"{best['impl']}[{best['torch_mode']}]" if best else None
        if impl == "onnxruntime":
            flax_row = next((r for r in results[(hw, b, dt)] if r["impl"] == "flax"), None)
            row["vs_flax"] = round(row["img_per_s"] / flax_row["img_per_s"], 3) if flax_row else None
        emit(row)

    def prepare(bench, impl, hw, b, dt) -> Prepared | None:
        try:
            return bench.prepare(impl, dt, b, hw)
        except Exception as err:  # e.g. out of memory: report it and go on with the other measurements
            emit({**base_row(impl, hw, b, dt), "error": f"{type(err).__name__}: {str(err)[:300]}"})
            return None

    def sequential(bench, impl, hw, b, dt) -> None:
        load_start = os.getloadavg()[0]
        prep = prepare(bench, impl, hw, b, dt)
        if prep is None:
            return
        try:
            prep.warm(args.warmup)
            for _ in range(args.iters):
                prep.timed_call()
        except Exception as err:
            emit({**base_row(impl, hw, b, dt), "error": f"{type(err).__name__}: {str(err)[:300]}"})
            return
        report(impl, hw, b, dt, prep, load_start)

    flax_options = {"scan": args.scan, "attention": args.attention, "accuracy": args.accuracy}
    uses_torch = any(i.startswith("torch") for impls in plan.values() for i in impls)
    uses_flax = any("flax" in impls for impls in plan.values())
    uses_ort = any("onnxruntime" in impls for impls in plan.values())
    if args.interleave:
        benches = {}
        if uses_torch:
            benches["torch"] = TorchBench(config, device, threads, args.torch_tf32)
        if uses_flax:
            benches["flax"] = FlaxBench(config, device, args.jax_matmul_precision, **flax_options)
        if uses_ort:
            benches["onnxruntime"] = OrtBench(config, device, threads)
        for hw, b, dt in groups:
            load_start = os.getloadavg()[0]
            order = sorted(plan[(hw, b, dt)], key=lambda i: (i == "onnxruntime", i == "flax"))  # torch, flax, ort
            preps = {i: prepare(benches[i if i in ("flax", "onnxruntime") else "torch"], i, hw, b, dt) for i in order}
            preps = {i: p for i, p in preps.items() if p is not None}
            for prep in preps.values():
                prep.warm(args.warmup)
            for _ in range(args.iters):
                for prep in preps.values():
                    prep.timed_call()
            for impl, prep in preps.items():
                report(impl, hw, b, dt, prep, load_start)
    else:
        # all torch rows first (their numbers are needed for the flax rows' vs_best_torch; on a GPU torch's cache is
        # emptied before JAX's allocator, which never shrinks, takes its share)
        if uses_torch:
            tb = TorchBench(config, device, threads, args.torch_tf32)
            for hw, b, dt in groups:
                for impl in plan[(hw, b, dt)]:
                    if impl.startswith("torch"):
                        sequential(tb, impl, hw, b, dt)
            tb.close()
            del tb
            gc.collect()
        if uses_flax:
            fb = FlaxBench(config, device, args.jax_matmul_precision, **flax_options)
            for hw, b, dt in groups:
                if "flax" in plan[(hw, b, dt)]:
                    sequential(fb, "flax", hw, b, dt)
        if uses_ort:  # after flax: its rows carry vs_flax
            ob = OrtBench(config, device, threads)
            for hw, b, dt in groups:
                if "onnxruntime" in plan[(hw, b, dt)]:
                    sequential(ob, "onnxruntime", hw, b, dt)
            ob.close()

    for hw, b, dt in groups:
        rows = results[(hw, b, dt)]
        if not rows:
            continue
        summary = {
            "summary": True,
            "variant": args.variant,
            "size": size_str(hw),
            "batch": b,
            "dtype": dt,
            "img_per_s": {
                r["impl"] + (f"[{r['torch_mode']}]" if "torch_mode" in r else ""): r["img_per_s"] for r in rows
            },
        }
        flax = [r for r in rows if r["impl"] == "flax"]
        if flax and flax[0].get("vs_best_torch") is not None:
            summary["flax_vs_best_torch"] = flax[0]["vs_best_torch"]
        ort_rows = [r for r in rows if r["impl"] == "onnxruntime"]
        if ort_rows and ort_rows[0].get("vs_flax") is not None:
            summary["onnxruntime_vs_flax"] = ort_rows[0]["vs_flax"]
        emit(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
