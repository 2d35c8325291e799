"""One process of the two-process FSDP training run in tests/test_sharding.py (not a test module itself).

    python tests/multiprocess_train.py OUT.npz     # $BEIT_FLAX_DISTRIBUTED=1 and the JAX_* coordinator variables set

Every process builds the same tiny train state, places it FSDP-split over the devices of both processes, and feeds
its own half of each global batch of 8; two steps (buffers donated). Process 0 writes the gathered params and
the last loss to OUT.npz.
"""

from __future__ import annotations

import sys

import jax
import numpy as np
import optax
from finetune_helpers import FAST_COMPILE, TINY, tiny_batch
from flax import traverse_util

from beit_flax import DPT, training
from beit_flax.params import init_params
from beit_flax.sharding import (
    maybe_initialize_distributed,
    place,
    replicated,
    shard_batch,
    state_shardings,
    train_mesh,
)

GLOBAL_BATCH = 8
SEEDS = (1, 2)  # one global batch per step
FREEZE = ("head/conv3/bias",)  # as in tests/multidevice/test_sharded_training.py: its gradient is rounding noise
MIN_SIZE = 1024


def initial_state() -> training.TrainState:
    return training.create_train_state(DPT(TINY), init_params(TINY), optax.sgd(0.1, momentum=0.9), freeze=FREEZE)


def main(out: str) -> None:
    assert maybe_initialize_distributed() and jax.process_count() == 2
    index, count = jax.process_index(), jax.process_count()
    mesh = train_mesh()
    state0 = initial_state()
    shardings = state_shardings(state0, mesh, fsdp=True, min_size=MIN_SIZE)
    step, _ = training.sharded_steps(shardings, mesh, donate=True, compiler_options=FAST_COMPILE)
    rows = slice(index * GLOBAL_BATCH // count, (index + 1) * GLOBAL_BATCH // count)  # this process's share
    local = lambda seed: {k: v[rows] for k, v in tiny_batch(seed, batch=GLOBAL_BATCH).items()}

    state = place(state0, shardings)
    for seed in SEEDS:
        state, metrics = step(state, shard_batch(local(seed), mesh))
    split = sum(not x.sharding.is_fully_replicated for x in jax.tree.leaves(state.params))
    # gathered by one program that every process runs (a replicated array can be read from any process)
    params = jax.jit(lambda x: x, out_shardings=replicated(mesh))(state.params)
    if index == 0:
        flat = traverse_util.flatten_dict(params, sep="/")
        np.savez(
            out,
            loss=np.asarray(metrics["loss"]),
            split=split,
            mesh=mesh.size,
            **{f"params/{k}": np.asarray(v) for k, v in flat.items()},
        )
    print(f"process {index}: {split} param arrays split over {mesh.size} devices", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
