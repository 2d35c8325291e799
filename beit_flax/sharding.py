"""Data parallelism for inference: a mesh over this process's devices, params replicated, the batch sharded.

Inference is embarrassingly parallel, so each process works alone on its local devices (no cross-host collective
ever runs): with several processes (`jax.distributed`), each one takes its own slice of the inputs
(`process_slice`) and writes its own outputs. A program on local devices only is "fully addressable", which JAX
allows in multi-controller mode, provided inputs are placed with `jax.device_put(x, sharding)` (jit refuses to
shard a numpy argument itself once several processes exist).

    mesh = local_mesh()                               # all local devices, axis "batch"
    params = place_replicated(params, mesh)           # one copy per device (one in all on CPU)
    batch = jax.device_put(pad_batch(images, round_up(len(images), mesh.size)), batch_sharded(mesh))

Training (`train.sharded_steps`) is different: a step reduces the gradients over the global batch, so its mesh
(`train_mesh`) spans every process's devices. The state is replicated (data parallel) or, with `fsdp=True`, its
large arrays are split over the same "batch" axis (FSDP / ZeRO-3 style: XLA gathers each weight where it is used,
and each device updates only its slice); either way the gradient reduction comes from the shardings, not from a
hand-written all-reduce.

    mesh = train_mesh()                               # all devices of all processes, axis "batch"
    shardings = state_shardings(state, mesh, fsdp=True)
    state = place(state, shardings)
    batch = shard_batch(host_batch, mesh)             # this process's rows -> one global batch
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

T = TypeVar("T")

BATCH_AXIS = "batch"
DISTRIBUTED_ENV = "BEIT_FLAX_DISTRIBUTED"  # "1" / "true" / "yes" / "on": call jax.distributed.initialize()
NUM_PROCESSES_ENV = "JAX_NUM_PROCESSES"  # read here (jax itself reads only JAX_COORDINATOR_ADDRESS from the env)
PROCESS_ID_ENV = "JAX_PROCESS_ID"
# FSDP splits arrays of at least this many elements: BEiT's matrices and conv kernels (99.9% of the parameters; on 8
# devices all but BEiT-B's (2212, 12) relative-position tables have an axis to split, 99.6%) but none of its vectors
# (biases, norms, layer scales: at most 4096 elements in BEiT-L), each of which would cost a collective per use to
# save a few KiB per device
FSDP_MIN_SIZE = 2**14
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}


def check_devices(devices: int | Sequence[jax.Device] | None) -> list[jax.Device]:
    """`devices` -> a list of this process's devices: None = all of them, N = the first N, or the devices given."""
    local = jax.local_devices()
    if devices is None:
        return local
    if isinstance(devices, (int, np.integer)) and not isinstance(devices, bool):
        if not 1 <= devices <= len(local):
            raise ValueError(
                f"devices must be between 1 and the {len(local)} local {jax.default_backend()} device"
                f"{'s' * (len(local) != 1)}, got {devices}"
            )
        return local[: int(devices)]
    if isinstance(devices, Sequence) and not isinstance(devices, (str, bytes)) and devices:
        chosen = list(devices)
        ids = {d.id for d in local}
        foreign = [d for d in chosen if not isinstance(d, jax.Device) or d.id not in ids]
        if foreign:
            raise ValueError(f"devices must be this process's devices (jax.local_devices()); got {foreign[:3]}")
        if len({d.id for d in chosen}) != len(chosen):
            raise ValueError("devices lists a device twice")
        return chosen
    raise ValueError(f"devices must be None, a positive int or a list of jax devices; got {devices!r}")


def local_mesh(devices: int | Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh (axis "batch") over this process's devices: all by default, the first N, or the ones given."""
    return Mesh(np.array(check_devices(devices)), (BATCH_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device of `mesh` holds the whole array (the params)."""
    return NamedSharding(mesh, PartitionSpec())


def place_replicated(tree: T, mesh: Mesh) -> T:
    """Put a tree of arrays (the params) on every device of `mesh`, whole.

    On CPU devices, which all live in this host's memory, every device shares one copy: each leaf is copied once
    into a 64-byte aligned host buffer, which XLA CPU adopts without copying (`may_alias`) as every device's buffer
    (read-only for the programs: params are never donated). `jax.device_put` alone would make one copy per device:
    8 forced host devices held 8 x 0.41 GB of BEiT-B parameters. Other platforms get one copy per device.
    """
    if not all(d.platform == "cpu" for d in mesh.devices.flat):
        return jax.device_put(tree, replicated(mesh))
    return jax.tree.map(lambda x: jax.device_put(aligned_copy(x), replicated(mesh), may_alias=True), tree)


def replicated_subset(tree: T, mesh: Mesh) -> T:
    """Replicated arrays (`place_replicated`) as replicated arrays on `mesh`, a subset of their devices, sharing
    their buffers (no copy)."""

    def subset(x: jax.Array) -> jax.Array:
        shards = {shard.device: shard.data for shard in x.addressable_shards}
        buffers = [shards[d] for d in mesh.devices.flat]
        return jax.make_array_from_single_device_arrays(x.shape, replicated(mesh), buffers)

    return jax.tree.map(subset, tree)


def aligned_copy(x: Any, alignment: int = 64) -> np.ndarray:
    """A copy of array `x` in fresh host memory aligned to `alignment` bytes (XLA CPU aliases such buffers)."""
    x = np.asarray(x)
    raw = np.empty(x.nbytes + alignment, np.uint8)
    start = -raw.ctypes.data % alignment
    out = raw[start : start + x.nbytes].view(x.dtype).reshape(x.shape)
    out[...] = x
    return out


def batch_sharded(mesh: Mesh) -> NamedSharding:
    """The leading (batch) axis split evenly over the devices of `mesh`; the other axes whole."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXIS))


def round_up(n: int, multiple: int) -> int:
    """The smallest multiple of `multiple` that is >= n (and >= multiple)."""
    return max(1, -(-int(n) // int(multiple))) * int(multiple)


def pad_batch(arrays: Sequence[np.ndarray], size: int) -> np.ndarray:
    """Stack same-shaped arrays into a (size, ...) float32 batch, zeros after the last one (outputs to be dropped)."""
    if not 1 <= len(arrays) <= size:
        raise ValueError(f"cannot pad {len(arrays)} arrays to a batch of {size}")
    batch = np.zeros((size, *np.shape(arrays[0])), np.float32)
    batch[: len(arrays)] = arrays
    return batch


def process_slice(items: Sequence[T], index: int | None = None, count: int | None = None) -> list[T]:
    """This process's share of `items`: every `count`-th item from position `index` (default: jax.process_index()
    of jax.process_count()). Every process must pass the same `items` in the same order (sort them first); the
    slices are then disjoint and cover everything, and their sizes differ by at most one."""
    index = jax.process_index() if index is None else index
    count = jax.process_count() if count is None else count
    if not (isinstance(count, int) and count >= 1 and isinstance(index, int) and 0 <= index < count):
        raise ValueError(f"need 0 <= index < count, got index={index!r}, count={count!r}")
    return list(items)[index::count]


def distributed_requested(flag: bool = False) -> bool:
    """`flag`, or $BEIT_FLAX_DISTRIBUTED set to 1 / true / yes / on (ValueError for anything else but 0 / off)."""
    value = os.environ.get(DISTRIBUTED_ENV, "").strip().lower()
    if value not in _TRUE | _FALSE:
        raise ValueError(f"{DISTRIBUTED_ENV}={os.environ[DISTRIBUTED_ENV]!r}: expected 1 or 0")
    return flag or value in _TRUE


def _env_int(name: str) -> int | None:
    text = os.environ.get(name, "").strip()
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{name}={text!r}: expected an integer") from None


def maybe_initialize_distributed(flag: bool = False) -> bool:
    """Call `jax.distributed.initialize()` if `flag` or $BEIT_FLAX_DISTRIBUTED asks for it; True if JAX is (now)
    running distributed. Call it before anything touches a device.

    On Cloud TPU, Slurm and Open MPI, JAX finds the coordinator, process count and id itself. Elsewhere (several
    GPU hosts) set $JAX_COORDINATOR_ADDRESS (host:port of process 0, read by JAX) and $JAX_NUM_PROCESSES /
    $JAX_PROCESS_ID (read here and passed on); $JAX_LOCAL_DEVICE_IDS optionally restricts a process's GPUs.
    """
    if jax.distributed.is_initialized():
        return True
    if not distributed_requested(flag):
        return False
    kwargs = {}
    if (num := _env_int(NUM_PROCESSES_ENV)) is not None:
        kwargs["num_processes"] = num
    if (pid := _env_int(PROCESS_ID_ENV)) is not None:
        kwargs["process_id"] = pid
    jax.distributed.initialize(**kwargs)
    return True


# --- training: one mesh over every process, state replicated or split (FSDP), the global batch split ----------------


def train_mesh(devices: int | Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh (axis "batch") to train on. One process: as `local_mesh` (all devices, the first N or the ones
    given). Several processes (`jax.distributed`): every device of every process (`devices` must be None), since a
    train step reduces its gradients over the global batch, unlike inference where each process works alone."""
    if jax.process_count() == 1:
        return local_mesh(devices)
    if devices is not None:
        raise ValueError(f"devices={devices!r}: with {jax.process_count()} processes, training uses all devices")
    # grouped by process: each process's rows of the global batch are then one contiguous block (`shard_batch`)
    return Mesh(np.array(sorted(jax.devices(), key=lambda d: (d.process_index, d.id))), (BATCH_AXIS,))


def fsdp_spec(shape: Sequence[int], devices: int, min_size: int = FSDP_MIN_SIZE) -> PartitionSpec:
    """How FSDP lays out an array of `shape` over `devices`: split along its largest axis that `devices` divides
    (the first of equals) if it has at least `min_size` elements, else (scalars, vectors, odd shapes) replicated."""
    if devices > 1 and math.prod(shape) >= min_size:
        axes = [axis for axis, size in enumerate(shape) if size % devices == 0]
        if axes:
            axis = max(axes, key=lambda a: shape[a])
            return PartitionSpec(*[None] * axis, BATCH_AXIS)
    return PartitionSpec()


def state_shardings(tree: T, mesh: Mesh, *, fsdp: bool = False, min_size: int = FSDP_MIN_SIZE) -> T:
    """A NamedSharding for every array of `tree` (a train state; arrays or ShapeDtypeStructs), in its structure
    (static fields such as a TrainState's apply_fn are kept, so it serves as jit's in / out shardings).

    Data parallel (default): everything replicated. FSDP: each array by `fsdp_spec`, the optimizer state included
    (Adam's moments have their parameter's shape, so they split the same way); step counts replicated.
    """
    devices = mesh.shape[BATCH_AXIS]
    spec = lambda x: fsdp_spec(tuple(x.shape), devices, min_size) if fsdp else PartitionSpec()
    return jax.tree.map(lambda x: NamedSharding(mesh, spec(x)), tree)


def place(tree: T, shardings: Any) -> T:
    """Put a tree of arrays (a fresh train state: the same values in every process) onto `shardings`."""
    if jax.process_count() == 1:
        return jax.device_put(tree, shardings)

    def put(x: Any, sharding: NamedSharding) -> jax.Array:  # each process fills its own devices' shards
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(put, tree, shardings)


def shard_batch(batch: Mapping[str, Any], mesh: Mesh) -> dict[str, jax.Array]:
    """This process's rows of a global batch ({name: (b, ...) array}, on the host) -> global arrays split along
    the batch axis over `mesh`. One process: b is the global batch size. Several: each passes its own b rows (the
    same b everywhere) and the global batch is their concatenation in process order.

    Raises ValueError unless b is a multiple of this process's devices in the mesh (one equal share per device).
    """
    rows = {name: np.shape(x)[0] if np.ndim(x) else None for name, x in batch.items()}
    if len(set(rows.values())) != 1 or None in rows.values():
        raise ValueError(f"batch arrays need one common leading (batch) size, got {rows}")
    size = next(iter(rows.values()))
    local = sum(d.process_index == jax.process_index() for d in mesh.devices.flat)
    if size % local:
        where = " of this process" if jax.process_count() > 1 else ""
        raise ValueError(
            f"batch size {size} is not a multiple of the {local} devices{where} in the mesh: each device takes an "
            f"equal share (use {round_up(size, local)})"
        )
    sharding = batch_sharded(mesh)
    return {name: jax.make_array_from_process_local_data(sharding, np.asarray(x)) for name, x in batch.items()}
