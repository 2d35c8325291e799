#!/usr/bin/env python
"""Peak memory and speed of the jitted Flax BEiT-DPT against transformers' DPTForDepthEstimation (torch eager), one
process per measurement, from the native size up to 2048 x 2048.

    python benchmarks/memory.py --variant dpt_beit_base_384 --size 384 768 1024 2048 --limit-gib 12
    python benchmarks/memory.py --variant dpt_beit_large_512 --size 1024 --impl flax --warmup 0 --iters 1
    python benchmarks/memory.py --variant dpt_beit_base_384 --size 1024 --impl flax --query-chunk none   # unchunked

Every (size, impl) runs in a child process of its own, so that each peak is that measurement's alone: the child's
peak RSS (the kernel's `ru_maxrss`, read by the parent with `os.wait4`, so a child killed for memory still reports
how far it got) and, on a GPU, the device's peak bytes in use. `--limit-gib` caps each child's address space
(`RLIMIT_AS`): a measurement that needs more fails there with an error row instead of pushing a shared machine into
swap or the OOM killer. One JSON line per measurement (fields in benchmarks/README.md).

Parameters are random (Flax: `beit_flax.params.init_params`, every leaf spread; torch: transformers' own init),
images random normal: the numbers are for memory and speed only. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # the GPU peak is then what the model needs
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
sys.path.insert(0, str(ROOT / "benchmarks"))

from machine import cpu_name  # noqa: E402

VARIANTS = ("dpt_beit_base_384", "dpt_beit_large_384", "dpt_beit_large_512")
IMPLS = ("flax", "torch-eager")


def parse_size(text: str) -> tuple[int, int]:
    """'1024' -> (1024, 1024); '768x1024' -> (768, 1024) (H x W), multiples of 32 (transformers' fusion rounds
    other sizes up, which would not be a like-for-like row)."""
    parts = text.lower().split("x")
    if len(parts) not in (1, 2) or not all(p.isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"size must be N or HxW, got {text!r}")
    h, w = int(parts[0]), int(parts[-1])
    if h <= 0 or w <= 0 or h % 32 or w % 32:
        raise argparse.ArgumentTypeError(f"H and W must be positive multiples of 32, got {text!r}")
    return h, w


def query_chunk_arg(text: str) -> str | int | None:
    if text.lower() in ("auto", "none"):
        return None if text.lower() == "none" else "auto"
    if text.isdigit() and int(text) > 0:
        return int(text)
    raise argparse.ArgumentTypeError(f"expected auto, none or a positive int, got {text!r}")


# ------------------------------------------------------------------------------------------------------------ child


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """One measurement, in this (child) process: setup, `warmup` untimed calls, `iters` timed ones."""
    import numpy as np

    from beit_flax import PRESETS

    config = PRESETS[args.variant]
    h, w = args.size[0]
    images = np.random.default_rng(1).standard_normal((args.batch, h, w, 3), dtype=np.float32)
    row: dict[str, Any] = {}
    if args.impl[0] == "flax":
        import jax

        from beit_flax import DPT
        from beit_flax.params import init_params

        device = jax.devices()[0]
        leaves, tree = jax.tree.flatten(init_params(config, spread=0.02))
        for i, leaf in enumerate(leaves):  # a leaf at a time, its numpy copy dropped: one copy of the weights, as torch
            leaves[i] = jax.device_put(leaf, device)
        params = jax.tree.unflatten(tree, leaves)
        model = DPT(config, dtype=args.dtype[0], query_chunk=args.query_chunk)
        x = jax.device_put(images, device)
        t0 = time.perf_counter()
        compiled = jax.jit(lambda p, x: model.apply({"params": p}, x)).lower(params, x).compile()
        temp = compiled.memory_analysis().temp_size_in_bytes
        name = device.device_kind if device.platform != "cpu" else f"cpu: {cpu_name()} ({os.cpu_count()} cores)"
        row.update(
            compile_s=round(time.perf_counter() - t0, 2),
            xla_temp_gib=round(temp / 2**30, 3),
            query_chunk=args.query_chunk,
            jax_version=jax.__version__,
            device=name,
        )
        step = lambda: jax.block_until_ready(compiled(params, x))

        def device_peak() -> float | None:
            stats = device.memory_stats() if device.platform != "cpu" else None
            return round(stats["peak_bytes_in_use"] / 2**30, 3) if stats and "peak_bytes_in_use" in stats else None
    else:
        import torch

        from beit_flax.demo.torch_model import build_model

        torch.set_num_threads(args.threads or os.cpu_count() or 1)
        gpu = args.device == "gpu"
        dev = torch.device("cuda" if gpu else "cpu")
        torch.manual_seed(0)
        model = build_model(config).float().eval().to(dev)
        pixels = torch.from_numpy(images.transpose(0, 3, 1, 2).copy()).to(dev)
        name = torch.cuda.get_device_name(dev) if gpu else f"cpu: {cpu_name()} ({torch.get_num_threads()} threads)"
        row.update(torch_version=torch.__version__, torch_threads=torch.get_num_threads(), device=name)

        def step():
            with torch.inference_mode():
                out = model(pixel_values=pixels).predicted_depth
            if gpu:
                torch.cuda.synchronize(dev)
            return out

        def device_peak() -> float | None:
            return round(torch.cuda.max_memory_allocated(dev) / 2**30, 3) if gpu else None

    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.iters):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    row.update(
        s_per_img=round(statistics.median(times) / args.batch, 3),
        s_min=round(min(times) / args.batch, 3),
        iters=len(times),
        device_peak_gib=device_peak(),
    )
    return row


def child_main(args: argparse.Namespace) -> int:
    try:
        row = measure(args)
    except Exception as err:  # out of memory under --limit-gib, mostly: the parent reports how far it got
        row = {"error": f"{type(err).__name__}: {str(err).strip().splitlines()[0][:300] if str(err).strip() else ''}"}
    print("ROW " + json.dumps(row), flush=True)
    return 0


# ----------------------------------------------------------------------------------------------------------- parent


def run_one(args: argparse.Namespace, hw: tuple[int, int], impl: str, dtype: str) -> dict[str, Any]:
    """Run one measurement in a child process (address space capped at --limit-gib) and return its row."""
    command = [
        sys.executable,
        __file__,
        "--child",
        "--variant",
        args.variant,
        "--size",
        f"{hw[0]}x{hw[1]}",
        "--impl",
        impl,
        "--dtype",
        dtype,
        "--batch",
        str(args.batch),
        "--iters",
        str(args.iters),
        "--warmup",
        str(args.warmup),
        "--query-chunk",
        str(args.query_chunk).lower(),
        "--device",
        args.device,
    ]
    if args.threads:
        command += ["--threads", str(args.threads)]
    limit = int(args.limit_gib * 2**30) if args.limit_gib else None

    def cap() -> None:
        if limit:
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    load_start = os.getloadavg()[0]
    start = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=cap)
    _, status, usage = os.wait4(child.pid, 0)  # the child's own peak RSS, even if it was killed
    out, err = child.stdout.read(), child.stderr.read()
    child.returncode = os.waitstatus_to_exitcode(status)
    row: dict[str, Any] = {
        "variant": args.variant,
        "size": f"{hw[0]}x{hw[1]}",
        "impl": impl,
        "dtype": dtype,
        "batch": args.batch,
        "peak_rss_gib": round(usage.ru_maxrss / 2**20, 3),
    }
    lines = [line for line in out.splitlines() if line.startswith("ROW ")]
    if lines:
        row.update(json.loads(lines[-1][4:]))
    else:
        tail = (err.strip().splitlines() or [f"exit status {child.returncode}"])[-1]
        row["error"] = f"child died (exit status {child.returncode}): {tail[:300]}"
    row.update(
        limit_gib=args.limit_gib,
        wall_s=round(time.perf_counter() - start, 1),
        loadavg_1m=[round(load_start, 2), round(os.getloadavg()[0], 2)],
    )
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variant", choices=VARIANTS, default="dpt_beit_base_384")
    ap.add_argument("--size", type=parse_size, nargs="+", help="N or HxW, multiples of 32 (default: the net size)")
    ap.add_argument("--impl", choices=IMPLS, nargs="+", default=list(IMPLS))
    ap.add_argument("--dtype", nargs="+", default=["float32"], help="Flax compute dtype (torch rows: float32 only)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--iters", type=int, default=3, help="timed calls per measurement")
    ap.add_argument("--warmup", type=int, default=1, help="untimed calls after setup / compilation")
    ap.add_argument("--query-chunk", type=query_chunk_arg, default="auto", help="Flax: DPT(query_chunk=...)")
    ap.add_argument("--limit-gib", type=float, default=None, help="address-space cap of each child (RLIMIT_AS)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: the core count)")
    ap.add_argument("--device", choices=("cpu", "gpu"), default="cpu", help="torch's device (Flax: JAX's default)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child_main(args)
    from beit_flax import PRESETS

    net = PRESETS[args.variant].net_size
    for hw in args.size or [(net, net)]:
        for impl in args.impl:
            for dtype in args.dtype if impl == "flax" else ["float32"]:
                print(json.dumps(run_one(args, hw, impl, dtype)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
