#!/usr/bin/env python
"""Images/s of `Batcher` (what `beit_flax.predict` and `beit-depth predict` run) on 1 device and on N devices;
with --train, steps/s of the sharded train step (`training.sharded_steps`): 1 device, N data parallel, N FSDP.

    python benchmarks/data_parallel.py                      # CPU: 8 forced host devices, tiny and base_384 configs
    python benchmarks/data_parallel.py --devices 8 --variant tiny --images 64
    python benchmarks/data_parallel.py --real               # the machine's own devices (GPUs / TPU cores)
    python benchmarks/data_parallel.py --train              # train steps, tiny config, global batch 8
    python benchmarks/data_parallel.py --train --real --variant dpt_beit_large_512 --batch 16 --bf16 --remat

On CPU, --devices N forces N host devices (XLA_FLAGS=--xla_force_host_platform_device_count=N, set in a child
process before JAX starts). They share the same cores, so the CPU figure is a sanity check of the sharded path
(it must not be much slower), not a speed-up. Random params (`params.init_params`) and random images; compile
time is excluded (one warm-up pass over a full batch). One JSON line per measurement.

--train: `params.init_params`, Adam, rendered scenes (`data.synthetic_scenes`) at the net size; the global batch
(--batch, default N) is the same in every row, split over the devices; one untimed step compiles. FSDP splits the
arrays of at least --min-size elements (default `sharding.FSDP_MIN_SIZE`; the tiny config has one that large, try
--min-size 1024).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing


def measure(variant: str, images: int, settings: list[tuple[int, int]]) -> None:
    import jax
    import numpy as np

    from beit_flax import DPT, PRESETS
    from beit_flax.batcher import Batcher
    from beit_flax.models.dpt.config import TINY
    from beit_flax.params import init_params

    config = TINY if variant == "tiny" else PRESETS[variant]
    rng = np.random.default_rng(0)
    params = init_params(config)
    model = DPT(config)
    side = config.net_size
    inputs = [rng.standard_normal((side, side, 3)).astype(np.float32) for _ in range(images)]
    for devices, batch in settings:
        batcher = Batcher(model, params, batch, devices)
        start = time.perf_counter()
        for _ in batcher.run(enumerate(inputs[: batcher.batch_size])):  # compile + first batch
            pass
        compile_s = time.perf_counter() - start
        start = time.perf_counter()
        done = sum(1 for _ in batcher.run(enumerate(inputs)))
        elapsed = time.perf_counter() - start
        print(
            json.dumps(
                {
                    "variant": variant,
                    "net": side,
                    "backend": jax.default_backend(),
                    "devices": batcher.device_count,
                    "batch": batcher.batch_size,
                    "images": done,
                    "seconds": round(elapsed, 3),
                    "images_per_s": round(done / elapsed, 2),
                    "first_batch_s": round(compile_s, 2),
                    "host_cores": os.cpu_count(),
                }
            ),
            flush=True,
        )


def measure_train(variant: str, n: int, batch: int, steps: int, min_size: int | None, bf16: bool, remat: bool) -> None:
    import jax
    import numpy as np
    import optax

    from beit_flax import DPT, PRESETS, training
    from beit_flax.models.dpt.config import TINY
    from beit_flax.params import init_params
    from beit_flax.sharding import FSDP_MIN_SIZE, place, shard_batch, state_shardings, train_mesh
    from beit_flax.training.data import synthetic_scenes

    config = TINY if variant == "tiny" else PRESETS[variant]
    model = DPT(config, dtype="bfloat16" if bf16 else "float32", remat=remat)
    min_size = FSDP_MIN_SIZE if min_size is None else min_size
    state0 = training.create_train_state(model, init_params(config), optax.adam(1e-4))
    scenes = synthetic_scenes(batch, config.net_size)
    host_batch = scenes.batch(np.arange(batch))
    for devices, fsdp in ((1, False), (n, False), (n, True)):
        mesh = train_mesh(devices)
        shardings = state_shardings(state0, mesh, fsdp=fsdp, min_size=min_size)
        step, _ = training.sharded_steps(shardings, mesh, donate=True)
        state = place(jax.tree.map(jax.numpy.copy, state0), shardings)  # a copy: the step donates its input
        start = time.perf_counter()
        state, metrics = step(state, shard_batch(host_batch, mesh))  # compile + first step
        jax.block_until_ready(metrics)
        compile_s = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(steps):
            state, metrics = step(state, shard_batch(host_batch, mesh))  # the host-to-device copy included
        jax.block_until_ready((state, metrics))
        elapsed = time.perf_counter() - start
        split = sum(not x.sharding.is_fully_replicated for x in jax.tree.leaves(state.params))
        print(
            json.dumps(
                {
                    "mode": "train",
                    "variant": variant,
                    "net": config.net_size,
                    "backend": jax.default_backend(),
                    "devices": devices,
                    "layout": "fsdp" if fsdp else "replicated",
                    "split_param_arrays": split,
                    "min_size": min_size if fsdp else None,
                    "batch": batch,
                    "dtype": model.dtype,
                    "remat": remat,
                    "steps": steps,
                    "seconds": round(elapsed, 3),
                    "steps_per_s": round(steps / elapsed, 3),
                    "images_per_s": round(steps * batch / elapsed, 2),
                    "first_step_s": round(compile_s, 2),
                    "loss": round(float(metrics["loss"]), 5),
                    "host_cores": os.cpu_count(),
                }
            ),
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=8, help="N for the data-parallel rows (default: 8)")
    parser.add_argument(
        "--variant",
        nargs="+",
        help="default: tiny and dpt_beit_base_384; tiny with --train",
        choices=["tiny", "dpt_beit_large_512", "dpt_beit_large_384", "dpt_beit_base_384"],
    )
    parser.add_argument("--images", type=int, default=0, help="images per measurement (default: 64 tiny, 16 else)")
    parser.add_argument("--train", action="store_true", help="time train steps instead of inference")
    parser.add_argument("--batch", type=int, default=0, help="--train: global batch (default: N)")
    parser.add_argument("--steps", type=int, default=10, help="--train: timed steps per row")
    parser.add_argument("--min-size", type=int, help="--train: FSDP splits arrays of at least this many elements")
    parser.add_argument("--bf16", action="store_true", help="--train: bfloat16 compute")
    parser.add_argument("--remat", action="store_true", help="--train: recompute encoder blocks")
    parser.add_argument("--real", action="store_true", help="use the machine's devices, do not force CPU ones")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    n = args.devices
    settings = [(1, 1), (1, n), (n, n)]  # one device batch 1 (the CPU default), one device batch N, N devices
    variants = args.variant or (["tiny"] if args.train else ["tiny", "dpt_beit_base_384"])
    if args.child or args.real:
        for variant in variants:
            if args.train:
                measure_train(variant, n, args.batch or n, args.steps, args.min_size, args.bf16, args.remat)
            else:
                measure(variant, args.images or (64 if variant == "tiny" else 16), settings)
        return
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f]
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "BEIT_FLAX_CACHE_DIR": "off",
        "XLA_FLAGS": " ".join([*flags, f"--xla_force_host_platform_device_count={n}"]),
    }
    subprocess.run([sys.executable, __file__, "--child", *sys.argv[1:]], env=env, check=True)


if __name__ == "__main__":
    main()
