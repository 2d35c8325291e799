"""Fine-tune a BEiT-DPT model in JAX with the MiDaS loss, on generated scenes (exact depth) or on your own data.

    python examples/finetune.py                                   # small random-init model, generated scenes, CPU
    python examples/finetune.py --steps 600 --out runs/a --resume # continue runs/a to 600 steps
    python examples/finetune.py --weights dpt_beit_base_384.msgpack --data my_data --size 384 \
        --batch-size 4 --lr 1e-5 --layer-decay 0.9 --bf16 --remat  # real fine-tuning (a GPU)
    python examples/finetune.py --weights dpt_beit_large_512.msgpack --data my_data --size 512 \
        --batch-size 16 --bf16 --remat --fsdp                       # 8 GPUs, params and Adam state split

Prints the loss and AbsRel / delta1 (after scale-and-shift alignment, on held-out data) before and after training,
keeps orbax checkpoints of the train state in OUT/checkpoints (--resume continues from the newest one, exactly as if
never interrupted), and writes the final parameters as a beit-flax weights file OUT/finetuned.msgpack
(`beit_flax.load` / `beit-depth predict --weights`). --data DIR: see `beit_flax.training.data` for the folder layout; the
last 10% of the files (sorted by name) are held out for evaluation.

Every local device trains (data parallel: the batch is split over them, the gradients reduced by the sharding), so
--batch-size must be a multiple of the device count; --fsdp also splits the large parameters and their optimizer
state over the devices instead of replicating them (`beit_flax.sharding.state_shardings`), for when memory is tight.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import numpy as np
import optax

import beit_flax
from beit_flax import DPT, DPTConfig, training
from beit_flax.params import init_params
from beit_flax.training.data import DepthFolder, batch_indices, synthetic_scenes
from beit_flax.sharding import place, shard_batch, state_shardings, train_mesh


def small_config(size: int) -> DPTConfig:
    """A ~0.6M-parameter BEiT-DPT that trains in minutes on a CPU (the released models are 100-340M)."""
    return DPTConfig(
        width=64, depth=4, num_heads=4, train_grid=(size // 16, size // 16), hooks=(0, 1, 2, 3),
        reassemble_channels=(16, 32, 64, 64), fusion_channels=32, head_channels=16, net_size=size,
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=400, help="total optimizer steps (default 400)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--size", type=int, default=64, help="training crops are SIZE x SIZE (multiple of 16)")
    parser.add_argument("--out", type=Path, default=Path("finetune_out"), help="run folder (checkpoints, weights)")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    parser.add_argument("--data", type=Path, help="a folder of your own images/ + depth/ (+ masks/)")
    parser.add_argument("--weights", type=Path, help="start from a beit-flax weights file instead of random init")
    parser.add_argument("--freeze-encoder", action="store_true", help="train the DPT decoder only")
    parser.add_argument("--lr", type=float, default=5e-4, help="peak learning rate (warmup, then cosine)")
    parser.add_argument("--layer-decay", type=float, help="encoder block i gets lr * decay^(depth - i)")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 compute (parameters stay float32)")
    parser.add_argument("--remat", action="store_true", help="recompute encoder blocks in the backward pass")
    parser.add_argument("--scan", action="store_true", help="the encoder as nn.scan loops (compiles faster)")
    parser.add_argument("--fsdp", action="store_true", help="split the large params and optimizer state over the "
                        "devices (default: replicated, only the batch is split)")
    parser.add_argument("--scenes", type=int, default=512, help="generated training scenes (without --data)")
    parser.add_argument("--save-every", type=int, default=100, help="checkpoint interval in steps")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.size < 16 or args.size % 16:
        parser.error(f"--size must be a positive multiple of 16, got {args.size}")
    if args.steps < 0 or args.batch_size < 1 or args.lr <= 0 or args.save_every < 1:
        parser.error("--steps >= 0, --batch-size >= 1, --lr > 0 and --save-every >= 1 are required")
    if args.layer_decay is not None and not 0 < args.layer_decay <= 1:
        parser.error(f"--layer-decay must be in (0, 1], got {args.layer_decay}")
    return args


def evaluate(
    eval_step, state: training.TrainState, dataset, indices: np.ndarray, batch_size: int, mesh
) -> dict[str, float]:
    """Mean of the eval-step metrics over `indices` in full batches only (another shape would compile again, and
    might not split over the devices): the last partial batch is dropped, or repeated to a full one if it is all."""
    chunks = [indices[i : i + batch_size] for i in range(0, len(indices), batch_size)]
    chunks = [c for c in chunks if len(c) == batch_size] or [np.resize(indices, batch_size)]
    results = [jax.device_get(eval_step(state, shard_batch(dataset.batch(c), mesh))) for c in chunks]
    return {k: float(np.mean([r[k] for r in results])) for k in results[0]}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    log = lambda msg: print(f"[{time.perf_counter() - start:6.1f}s] {msg}", flush=True)

    if args.weights:
        model, params = beit_flax.load(args.weights)
        config = model.config
    else:
        config = small_config(args.size)
        params = init_params(config, seed=args.seed)
    model = DPT(config, dtype="bfloat16" if args.bf16 else "float32", remat=args.remat, scan=args.scan)

    if args.data:
        dataset = DepthFolder(args.data, args.size)
        held_out = max(1, len(dataset) // 10) if len(dataset) > 1 else 0
        train_idx = np.arange(len(dataset) - held_out)
        eval_idx = np.arange(len(dataset) - held_out, len(dataset)) if held_out else train_idx
        log(f"{args.data}: {len(train_idx)} training / {len(eval_idx)} held-out samples at {args.size}px")
    else:
        dataset = synthetic_scenes(args.scenes + 64, args.size, seed=args.seed)  # + 64 held-out scenes
        train_idx, eval_idx = np.arange(args.scenes), np.arange(args.scenes, args.scenes + 64)
        log(f"rendered {args.scenes} + 64 held-out scenes at {args.size}px")

    schedule = optax.warmup_cosine_decay_schedule(
        0.0, args.lr, warmup_steps=max(1, min(50, args.steps // 10)), decay_steps=max(args.steps, 1),
        end_value=0.05 * args.lr,
    )
    # no weight decay on biases, norms, layer scales and position tables (the usual BEiT / ViT recipe)
    decay_mask = lambda params: jax.tree.map(lambda p: p.ndim > 1, params)
    optimizer = optax.adamw(schedule, weight_decay=0.05, mask=decay_mask)
    state = training.create_train_state(
        model, params, optimizer, freeze=training.BACKBONE if args.freeze_encoder else (),
        layer_decay=args.layer_decay, clip_norm=1.0,
    )
    n_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
    log(f"model: {n_params / 1e6:.2f}M parameters, {len(state.frozen)} frozen tensors, dtype {model.dtype}"
        f"{', remat' if args.remat else ''}{', scan' if args.scan else ''}")
    mesh = train_mesh()
    if args.batch_size % mesh.size:
        raise SystemExit(f"--batch-size {args.batch_size} must be a multiple of the {mesh.size} devices")
    shardings = state_shardings(state, mesh, fsdp=args.fsdp)
    state = place(state, shardings)  # before a restore: the restored arrays take the same layout
    # donate: the old state's buffers hold the new one (the loop never looks back), which matters on a GPU
    train_step, eval_step = training.sharded_steps(shardings, mesh, donate=True)
    log(f"{mesh.size} {jax.default_backend()} device{'s' * (mesh.size > 1)}, batch {args.batch_size // mesh.size} "
        f"each, {'FSDP' if args.fsdp else 'data parallel'}")

    checkpoints = args.out / "checkpoints"
    meta = {"config": config.to_dict(), "seed": args.seed, "size": args.size, "batch_size": args.batch_size}
    if args.resume and training.latest_step(checkpoints) is not None:
        saved = training.checkpoint_metadata(checkpoints)
        if saved != meta:
            changed = sorted(k for k in meta.keys() | saved.keys() if meta.get(k) != saved.get(k))
            raise SystemExit(f"{checkpoints} was saved with other settings ({', '.join(changed)}); use another --out")
        state, _ = training.restore_checkpoint(checkpoints, state)
        log(f"resumed from step {int(state.step)}")
    elif args.resume:
        log(f"no checkpoint in {checkpoints}; starting from step 0")

    before = evaluate(eval_step, state, dataset, eval_idx, args.batch_size, mesh)
    log(f"before: loss {before['loss']:.4f}  AbsRel {before['abs_rel']:.4f}  delta1 {before['delta1']:.4f}")
    first = int(state.step)
    for step in range(first, args.steps):
        batch = dataset.batch(train_idx[batch_indices(len(train_idx), args.batch_size, step, args.seed)])
        state, metrics = train_step(state, shard_batch(batch, mesh))
        done = step + 1
        if done % 25 == 0 or done == args.steps:
            m = jax.device_get(metrics)
            log(f"step {done:5d}  loss {m['loss']:.4f} (data {m['data']:.4f}, gradient {m['gradient']:.4f})  "
                f"|g| {m['grad_norm']:.3f}  lr {float(schedule(step)):.2e}")
        if done % args.save_every == 0 or done == args.steps:
            training.save_checkpoint(checkpoints, state, meta)
    after = evaluate(eval_step, state, dataset, eval_idx, args.batch_size, mesh)
    log(f"after:  loss {after['loss']:.4f}  AbsRel {after['abs_rel']:.4f}  delta1 {after['delta1']:.4f}")

    weights = args.out / "finetuned.msgpack"
    beit_flax.save(weights, config, state.params)
    log(f"{args.steps - first} steps; wrote {weights} and checkpoints up to step {int(state.step)} in {checkpoints}")
    print(f"summary: loss {before['loss']:.4f} -> {after['loss']:.4f}, AbsRel {before['abs_rel']:.4f} -> "
          f"{after['abs_rel']:.4f}, delta1 {before['delta1']:.4f} -> {after['delta1']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
