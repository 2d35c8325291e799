"""Fine-tune a BEiT-DPT model in JAX with the MiDaS loss (or a ZoeDepth with its SILog loss on metric depth), on
generated scenes (exact depth) or on your own data.

    python examples/finetune.py                                    # small random-init model, generated scenes, CPU
    python examples/finetune.py --steps 600 --out runs/a           # a run into runs/a; if it is interrupted, ...
    python examples/finetune.py --steps 600 --out runs/a --resume  # ... this continues it to step 600, exactly
    python examples/finetune.py --weights dpt_beit_base_384.msgpack --data my_data --size 384 \
        --batch-size 4 --lr 1e-5 --layer-decay 0.9 --bf16 --remat  # real fine-tuning (a GPU)
    python examples/finetune.py --weights dpt_beit_large_512.msgpack --data my_data --size 512 \
        --batch-size 16 --bf16 --remat --fsdp                       # 8 GPUs, params and Adam state split
    python examples/finetune.py --loss silog --weights zoedepth_nyu.msgpack --data my_metric_data --size 384 \
        --batch-size 4 --lr 1e-5 --bf16 --remat                     # metric: a ZoeDepth, depth maps in meters
    python examples/finetune.py --weights dpt_beit_base_384.msgpack --dataset nyu ~/data/nyu_depth_v2 \
        --size 384 --batch-size 8 --lr 1e-5 --bf16 --eval-every 1000   # NYU's training split, scored on its test split

--loss silog trains metric depth with ZoeDepth's scale-invariant log loss (`training.losses.silog_loss`) on a
ZoeDepth (--weights a ZoeDepth file; none: a small random one), --data depth maps in meters used as they are, and
scores AbsRel, RMSE (m) and delta1 without alignment; --loss silog-da is Depth Anything's form, for its metric models.
--loss ssimae (default), ssitrim and midas need a relative model (MiDaS, Depth Anything's relative ones): MiDaS'
losses on median / MAD normalised maps (ssitrim drops each image's largest 20% of residuals), which keep the sign of
depth, and the least-squares loss of MiDaS' released code, which a random-init model turns into inverted depth on
these scenes (`training.losses`): fine for fine-tuning a pretrained MiDaS.

Prints the loss and AbsRel / delta1 (after scale-and-shift alignment, on held-out data) before and after training.
The run folder --out (default finetune_out) gets orbax checkpoints of the train state in OUT/checkpoints and the
final parameters as a beit-flax weights file OUT/finetuned.msgpack (`beit_flax.load` / `beit-depth predict
--weights`). A folder that holds a run is only used again with --resume, which continues from its newest checkpoint
exactly as if never interrupted, and only with the settings the run was started with (`run_settings`: the model,
data, steps, learning rate and optimizer; the learning-rate schedule depends on --steps, so a longer run is a new
run, e.g. --weights OUT/finetuned.msgpack --out OTHER). --data DIR: see `beit_flax.training.data` for the folder
layout; the last 10% of the files (sorted by name) are held out for evaluation.

--dataset NAME ROOT (nyu, nyu_labeled, kitti) trains on the dataset's training split (NYU: ROOT/sync/, listed by
--train-split nyudepthv2_train_files_with_gt.txt or all of it, else ROOT/official_splits/train; KITTI: --train-split
kitti_eigen_train_files_with_gt.txt) read by Grain (`beit_flax.training.datasets`: seeded shuffle per epoch, the
dataset's fixed crop, a random SIZE x SIZE crop and flip; its position saved in each checkpoint), and scores the model
on the test split (--split) as `beit-depth evaluate` does (`beit_flax.training.benchmark`): before training, every
--eval-every steps and after, each a line in OUT/eval.jsonl.

Every local device trains (data parallel: the batch is split over them, the gradients reduced by the sharding), so
--batch-size must be a multiple of the device count; --fsdp also splits the large parameters and their optimizer
state over the devices instead of replicating them (`beit_flax.sharding.state_shardings`), for when memory is tight.

Exit status: 0 done; 1 --weights, --data or --dataset cannot be read (or Grain is not installed); 2 bad arguments, or
an --out that does not fit (it holds a run and --resume is not given, or the run there has other settings); 3 a
checkpoint or OUT/eval.jsonl cannot be written; 130 / 143 interrupted by Ctrl-C / SIGTERM (--resume continues from the
newest checkpoint). Errors are one line on stderr.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path
from typing import NoReturn

import jax
import numpy as np
import optax

import beit_flax
from beit_flax import DPTConfig, interrupts, training
from beit_flax.evaluation.datasets import DATASETS, DatasetError
from beit_flax.models import registry
from beit_flax.models.zoedepth import BinConfig, ZoeDepthConfig
from beit_flax.params import init_params
from beit_flax.sharding import place, shard_batch, state_shardings, train_mesh
from beit_flax.training.benchmark import Benchmark
from beit_flax.training.runs import HeldOut, changed_settings, lr_schedule

PROG = Path(__file__).name
WEIGHT_DECAY = 0.05  # AdamW's, on matrices and kernels only
CLIP_NORM = 1.0  # of the global gradient norm
HELD_OUT_SCENES = 64  # generated evaluation scenes, after the training ones
TRAINABLE = tuple(name for name, d in DATASETS.items() if d.train is not None)  # --dataset's choices


def fail(message: str, code: int = 2) -> NoReturn:
    """One line on stderr and exit `code` (see the module doc)."""
    print(f"{PROG}: error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(code)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, not argparse's usage block
        fail(f"{message} (--help lists the options)")


def small_config(size: int) -> DPTConfig:
    """A ~0.6M-parameter BEiT-DPT that trains in minutes on a CPU (the released models are 100-340M)."""
    return DPTConfig(
        width=64,
        depth=4,
        num_heads=4,
        train_grid=(size // 16, size // 16),
        hooks=(0, 1, 2, 3),
        reassemble_channels=(16, 32, 64, 64),
        fusion_channels=32,
        head_channels=16,
        net_size=size,
    )


def small_zoedepth_config(size: int) -> ZoeDepthConfig:
    """`small_config` as the core of a one-head ZoeDepth (16 bins, 16-wide embeddings): for --loss silog."""
    core = small_config(size)
    return ZoeDepthConfig(
        core=core,
        bins=(BinConfig("nyu", 16),),
        bin_embedding_dim=16,
        n_attractors=(4, 3, 2, 1),
        seed_mlp_dim=32,
        projector_mlp_dim=16,
        attractor_mlp_dim=16,
        log_binomial_mlp_dim=(core.head_channels + 1 + 16) // 2,
        net_size=(size, size),
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = _Parser(
        prog=PROG,
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.strip().split("\n\n")[-1],  # exit status
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--steps", type=int, default=400, help="total optimizer steps")
    parser.add_argument("--batch-size", type=int, default=8, help="global batch (split over the local devices)")
    parser.add_argument(
        "--size",
        type=int,
        default=64,
        help="training crops are SIZE x SIZE (a multiple of the model's input multiple: MiDaS 16, ZoeDepth 32, "
        "Depth Anything 14)",
    )
    out_help = "run folder: OUT/checkpoints (orbax), OUT/finetuned.msgpack (the final weights), OUT/eval.jsonl"
    parser.add_argument("--out", type=Path, default=Path("finetune_out"), help=out_help)
    resume_help = "continue the run in --out from its newest checkpoint (needed to reuse an --out)"
    parser.add_argument("--resume", action="store_true", help=resume_help)
    parser.add_argument("--data", type=Path, help="your own images/ + depth/ (+ masks/); none: generated scenes")
    dataset_help = f"train on a benchmark's training split, scored on its test split: {', '.join(TRAINABLE)}"
    parser.add_argument("--dataset", nargs=2, metavar=("NAME", "ROOT"), help=dataset_help)
    parser.add_argument("--train-split", type=Path, metavar="FILE", help="--dataset's training list (kitti: needed)")
    parser.add_argument("--split", type=Path, metavar="FILE", help="--dataset's test list (kitti: needed)")
    parser.add_argument("--eval-every", type=int, default=0, help="--dataset: score every N steps (0: before, after)")
    parser.add_argument("--eval-limit", type=int, help="--dataset: score the first N test images only")
    parser.add_argument("--workers", type=int, default=4, help="--dataset: reading threads (each reads a batch ahead)")
    parser.add_argument("--weights", type=Path, help="start from a beit-flax weights file; none: random init")
    parser.add_argument(
        "--loss",
        choices=tuple(training.state.LOSS_TARGETS),
        default="ssimae",
        help="ssimae / ssitrim: MiDaS' scale-and-shift-invariant losses on median / MAD normalised inverse depth "
        "(ssitrim drops each image's largest 20%% of residuals); midas: the least-squares one (all three for a MiDaS "
        "model); silog: ZoeDepth's scale-invariant log loss on metric depth in meters; silog-da: Depth Anything's "
        "(for its metric models)",
    )
    parser.add_argument("--freeze-encoder", action="store_true", help="train the DPT decoder only")
    parser.add_argument("--lr", type=float, default=5e-4, help="peak learning rate (warmup, then cosine)")
    parser.add_argument("--layer-decay", type=float, help="encoder block i gets lr * decay^(depth - i); none: no decay")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 compute (parameters stay float32)")
    parser.add_argument("--remat", action="store_true", help="recompute encoder blocks in the backward pass")
    parser.add_argument("--scan", action="store_true", help="the encoder as nn.scan loops (compiles faster)")
    fsdp_help = "split the large params and optimizer state over the devices (otherwise replicated, only the batch is)"
    parser.add_argument("--fsdp", action="store_true", help=fsdp_help)
    parser.add_argument("--scenes", type=int, default=512, help="generated training scenes (without --data)")
    parser.add_argument("--save-every", type=int, default=100, help="checkpoint interval in steps")
    parser.add_argument("--seed", type=int, default=0, help="random init, generated scenes and batch order")
    args = parser.parse_args(argv)
    if args.size < 14:
        parser.error(f"--size must be at least 14 (and a multiple of the model's input multiple), got {args.size}")
    if args.steps < 0 or args.batch_size < 1 or args.lr <= 0 or args.save_every < 1 or args.scenes < 1:
        parser.error("--steps >= 0, --batch-size >= 1, --lr > 0, --save-every >= 1 and --scenes >= 1 are required")
    if args.layer_decay is not None and not 0 < args.layer_decay <= 1:
        parser.error(f"--layer-decay must be in (0, 1], got {args.layer_decay}")
    if args.dataset and (args.data or args.dataset[0] not in TRAINABLE):
        parser.error(f"--dataset NAME ROOT: NAME one of {', '.join(TRAINABLE)}, and no --data")
    if not args.dataset and (args.train_split or args.split or args.eval_every or args.eval_limit):
        parser.error("--train-split, --split, --eval-every and --eval-limit go with --dataset")
    if args.eval_every < 0 or (args.eval_limit or 1) < 1 or args.workers < 0 or not 0 <= args.seed < 2**32:
        parser.error("--eval-every >= 0, --eval-limit >= 1, --workers >= 0 and 0 <= --seed < 2**32 are required")
    return args


def run_settings(args: argparse.Namespace, config: DPTConfig | ZoeDepthConfig, bench: Benchmark | None) -> dict:
    """What a resumed run must share with the run it continues (saved as the checkpoints' metadata, JSON values):
    the model, the data and batch order, and everything the learning-rate schedule and the optimizer depend on."""
    return {
        "config": config.to_dict(),
        "seed": args.seed,
        "size": args.size,
        "batch_size": args.batch_size,
        "scenes": None if args.data or args.dataset else args.scenes,
        **({"dataset": bench.settings()} if bench else {}),
        "steps": args.steps,
        "lr": args.lr,
        "layer_decay": args.layer_decay,
        "freeze_encoder": args.freeze_encoder,
        "weight_decay": WEIGHT_DECAY,
        "clip_norm": CLIP_NORM,
        **({"loss": args.loss} if args.loss != "midas" else {}),  # runs from before --loss are "midas" runs
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    log = lambda msg: print(f"[{time.perf_counter() - start:6.1f}s] {msg}", flush=True)

    # every refusal comes before any work, and nothing in --out is ever overwritten without --resume
    checkpoints, weights = args.out / "checkpoints", args.out / "finetuned.msgpack"
    saved_step = training.latest_step(checkpoints)
    if not args.resume and (saved_step is not None or weights.exists()):
        held = f"checkpoints up to step {saved_step}" if saved_step is not None else weights.name
        fail(f"--out {args.out} already holds a run ({held}); pass --resume to continue it, or use another --out")
    mesh = train_mesh()
    if args.batch_size % mesh.size:
        fail(f"--batch-size {args.batch_size} must be a multiple of the {mesh.size} devices")
    if args.weights:
        try:
            model, params = beit_flax.load(args.weights)
        except (OSError, ValueError) as err:
            fail(f"--weights: {err}", 1)
        config = model.config
        family = registry.of_model(model)
        # a loss trains the kind of map the model outputs: metric depth or relative inverse depth
        kind = training.LOSS_TARGETS[family.default_loss(config)]
        fits = [name for name, target in training.LOSS_TARGETS.items() if target == kind]
        if args.loss not in fits:
            fail(f"--weights {args.weights} is a {family.title} model: --loss {' or '.join(fits)} trains it")
    else:
        metric = training.LOSS_TARGETS[args.loss] == "depth"  # a loss on meters: a small random ZoeDepth
        try:
            config = small_zoedepth_config(args.size) if metric else small_config(args.size)
        except ValueError as err:
            fail(f"--size {args.size}: {err}")
        params = None
    multiple = registry.of_config(config).input_multiple(config)
    if args.size % multiple:
        fail(f"--size {args.size} is not a multiple of the model's input multiple {multiple}")
    if params is None:
        params = init_params(config, seed=args.seed)
    target = training.LOSS_TARGETS[args.loss]
    kwargs = {"batch_size": args.batch_size, "seed": args.seed, "target": target}
    bench = None
    if args.dataset:
        opened = {"record": args.out / "eval.jsonl", "size": args.size, "workers": args.workers, **kwargs}
        try:
            bench = Benchmark(*args.dataset, args.train_split, args.split, args.eval_limit, **opened)
        except DatasetError as err:
            fail(f"--dataset: {err}", 1)
    settings = run_settings(args, config, bench)
    if saved_step is not None:
        changed = changed_settings(training.checkpoint_metadata(checkpoints), settings)
        if changed:
            fail(
                f"{checkpoints} holds a run with other settings ({'; '.join(changed)}): resume it with its own "
                "settings, or use another --out"
            )
    model = registry.of_config(config).build(
        config, dtype="bfloat16" if args.bf16 else "float32", remat=args.remat, scan=args.scan
    )
    try:
        source = bench or HeldOut.open(args.data, args.scenes, HELD_OUT_SCENES, args.size, **kwargs)
    except (OSError, ValueError) as err:
        fail(f"--data: {err}", 1)
    log(source.description)

    schedule = lr_schedule(args.steps, args.lr)
    # no weight decay on biases, norms, layer scales and position tables (the usual BEiT / ViT recipe)
    decay_mask = lambda params: jax.tree.map(lambda p: p.ndim > 1, params)
    optimizer = optax.adamw(schedule, weight_decay=WEIGHT_DECAY, mask=decay_mask)
    state = training.create_train_state(
        model,
        params,
        optimizer,
        freeze=training.backbone(model) if args.freeze_encoder else (),
        layer_decay=args.layer_decay,
        clip_norm=CLIP_NORM,
        loss=args.loss,
    )
    n_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
    log(
        f"model: {n_params / 1e6:.2f}M parameters, {len(state.frozen)} frozen tensors, dtype {model.dtype}"
        f"{', remat' if args.remat else ''}{', scan' if args.scan else ''}"
    )
    shardings = state_shardings(state, mesh, fsdp=args.fsdp)
    state = place(state, shardings)  # before a restore: the restored arrays take the same layout
    # donate: the old state's buffers hold the new one (the loop never looks back), which matters on a GPU
    train_step, eval_step = training.sharded_steps(shardings, mesh, donate=True)
    log(
        f"{mesh.size} {jax.default_backend()} device{'s' * (mesh.size > 1)}, batch {args.batch_size // mesh.size} "
        f"each, {'FSDP' if args.fsdp else 'data parallel'}"
    )
    saved = {}
    if saved_step is not None:
        state, saved = training.restore_checkpoint(checkpoints, state)
        log(f"resumed from step {int(state.step)}")
    elif args.resume:
        log(f"no checkpoint in {checkpoints}; starting from step 0")
    try:
        source.start(model, shardings, mesh, eval_step, int(state.step), saved)
        before = source.evaluate(state)
    except (ImportError, DatasetError) as err:
        fail(f"--dataset: {err}", 1)
    except OSError as err:  # OUT/eval.jsonl
        fail(str(err), 3)
    log(f"before: {source.line(before)}")
    first = int(state.step)
    interrupts.install()  # SIGTERM stops the run like Ctrl-C; a signal swallowed in a GC callback stops it too
    try:
        for step in range(first, args.steps):
            interrupts.check()
            state, metrics = train_step(state, shard_batch(source.batch(step), mesh))
            done = step + 1
            if done % 25 == 0 or done == args.steps:
                m = jax.device_get(metrics)
                terms = "" if "gradient" not in m else f" (data {m['data']:.4f}, gradient {m['gradient']:.4f})"
                log(
                    f"step {done:5d}  loss {m['loss']:.4f}{terms}  "
                    f"|g| {m['grad_norm']:.3f}  lr {float(schedule(step)):.2e}"
                )
            if done % args.save_every == 0:
                training.save_checkpoint(checkpoints, state, {**settings, **source.metadata()})
            if args.eval_every and done % args.eval_every == 0 and done != args.steps:
                log(f"step {done:5d}  {source.line(source.evaluate(state))}")
        training.save_checkpoint(checkpoints, state, {**settings, **source.metadata()})  # a no-op if saved already
        after = source.evaluate(state)
    except KeyboardInterrupt as err:
        signum = getattr(err, "signum", signal.SIGINT)
        fail(
            f"interrupted ({signal.Signals(signum).name}); --resume continues from the newest checkpoint in "
            f"{checkpoints} (step {training.latest_step(checkpoints)})",
            128 + signum,
        )
    except DatasetError as err:  # a training or test file that cannot be read
        fail(f"--dataset: {err}; --resume continues from step {training.latest_step(checkpoints)}", 1)
    except OSError as err:  # a checkpoint (training.CheckpointWriteError) or OUT/eval.jsonl that cannot be written
        fail(f"{err}; --resume continues from step {training.latest_step(checkpoints)}", 3)
    finally:
        source.close()
    log(f"after:  {source.line(after)}")

    beit_flax.save(weights, config, state.params)
    log(f"{args.steps - first} steps; wrote {weights} and checkpoints up to step {int(state.step)} in {checkpoints}")
    print(f"summary: {source.summary(before, after)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
