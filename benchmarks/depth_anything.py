#!/usr/bin/env python
"""Depth Anything V2: seconds per image and peak memory of the jitted Flax model vs transformers'
`DepthAnythingForDepthEstimation` (eager, fp32), one child process per measurement, so that each peak RSS is its
own and the implementations never share the CPU.

    python benchmarks/depth_anything.py --encoder vits vitb vitl --size 518          # speed at the native size
    python benchmarks/depth_anything.py --encoder vits --size 1036 2044 --iters 1    # memory at high resolution

One JSON line per measurement: impl, encoder, size, batch 1, s_per_img (median of --iters timed calls after one
warm-up call; Flax: after compiling), compile_s (Flax), peak_rss_gib (the child's max RSS: weights, activations,
the compiled program), cpu (model name). Weights are random (nothing is downloaded; speed does not depend on them);
images random normal. Every measurement of one implementation runs before the other's.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from machine import cpu_name  # benchmarks/machine.py

ENCODERS = ("vits", "vitb", "vitl")


def flax_run(encoder: str, size: int, iters: int) -> dict:
    import jax
    import numpy as np

    from beit_flax.models.depth_anything import DepthAnything
    from beit_flax.models.depth_anything.config import encoder_config
    from beit_flax.params import init_params

    config = encoder_config(encoder)
    params = jax.device_put(init_params(config, seed=0))
    apply = jax.jit(DepthAnything(config).apply)
    x = np.random.default_rng(0).normal(size=(1, size, size, 3)).astype(np.float32)
    start = time.perf_counter()
    apply({"params": params}, x).block_until_ready()
    compile_s = time.perf_counter() - start
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        apply({"params": params}, x).block_until_ready()
        times.append(time.perf_counter() - start)
    return {"s_per_img": statistics.median(times), "compile_s": round(compile_s, 2)}


def torch_run(encoder: str, size: int, iters: int) -> dict:
    import torch
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config

    width, depth, heads, features, out_channels, taps = {
        "vits": (384, 12, 6, 64, [48, 96, 192, 384], [2, 5, 8, 11]),
        "vitb": (768, 12, 12, 128, [96, 192, 384, 768], [2, 5, 8, 11]),
        "vitl": (1024, 24, 16, 256, [256, 512, 1024, 1024], [4, 11, 17, 23]),
    }[encoder]
    backbone = Dinov2Config(
        hidden_size=width,
        num_hidden_layers=depth,
        num_attention_heads=heads,
        image_size=518,
        patch_size=14,
        out_indices=[t + 1 for t in taps],
        apply_layernorm=True,
        reshape_hidden_states=False,
    )
    config = DepthAnythingConfig(
        backbone_config=backbone,
        neck_hidden_sizes=out_channels,
        fusion_hidden_size=features,
        reassemble_hidden_size=width,
    )
    model = DepthAnythingForDepthEstimation(config).eval()
    x = torch.randn(1, 3, size, size)
    times = []
    with torch.inference_mode():
        model(pixel_values=x)
        for _ in range(iters):
            start = time.perf_counter()
            model(pixel_values=x)
            times.append(time.perf_counter() - start)
    return {"s_per_img": statistics.median(times)}


def child(args: argparse.Namespace) -> None:
    impl = args.impl[0]  # one of each in a child
    run = flax_run if impl == "flax" else torch_run
    row = {"impl": impl, "encoder": args.encoder[0], "size": args.size[0], "batch": 1}
    row |= run(args.encoder[0], args.size[0], args.iters)
    row["peak_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    row["cpu"] = cpu_name()
    print(json.dumps(row), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--encoder", nargs="+", choices=ENCODERS, default=["vits"])
    ap.add_argument("--size", nargs="+", type=int, default=[518], help="square sides, multiples of 14")
    ap.add_argument("--impl", nargs="+", choices=("flax", "torch-eager"), default=["flax", "torch-eager"])
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)
    for impl in args.impl:
        for encoder in args.encoder:
            for size in args.size:
                argv = [
                    "--child",
                    "--impl",
                    impl,
                    "--encoder",
                    encoder,
                    "--size",
                    str(size),
                    "--iters",
                    str(args.iters),
                ]
                done = subprocess.run([sys.executable, __file__, *argv], capture_output=True, text=True)
                out = done.stdout.strip() or json.dumps(
                    {
                        "impl": impl,
                        "encoder": encoder,
                        "size": size,
                        "error": (done.stderr.strip().splitlines() or ["?"])[-1],
                    }
                )
                print(out, flush=True)


if __name__ == "__main__":
    main()
