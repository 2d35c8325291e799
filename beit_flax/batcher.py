"""Running network inputs on the devices: `Batcher` groups `(meta, input (H', W', 3))` items by shape into batches
(sizes from `batch_plan`), splits each batch over a mesh of local devices (params replicated, placed once) and keeps
one batch in flight while the host prepares the next; `Programs` bounds the compiled programs it keeps.

Data parallel (`sharding.py`): by default every local device runs; params are replicated on each (on CPU devices,
one host copy that all of them share), every batch is split evenly over them along its first axis. `batch_size` is
global (all devices together) and rounded up to a multiple of the device count; `devices=N` uses the first N local
devices only. The host side (images, views, families' processing) is `pipeline.py`.
"""

from __future__ import annotations

import collections
import ctypes
import ctypes.util
import functools
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding

from beit_flax import interrupts
from beit_flax.models import registry
from beit_flax.models.precast import precast
from beit_flax.sharding import (
    batch_sharded,
    local_mesh,
    pad_batch,
    place_replicated,
    replicated,
    replicated_subset,
    round_up,
)

M = TypeVar("M")  # an item's metadata, carried through the batches with it

Devices = int | Sequence[jax.Device] | None


def default_batch_size(devices: int = 1) -> int:
    """Per device: 1 on CPU (XLA already spreads one image over all cores; padding would only cost), 8 on GPU /
    TPU; times the number of devices."""
    return (1 if jax.default_backend() == "cpu" else 8) * devices


def check_batch_size(batch_size: int | None, devices: int = 1) -> int:
    """The global batch size: `batch_size` rounded up to a multiple of `devices`, or the default for them."""
    if batch_size is None:
        return default_batch_size(devices)
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    return round_up(batch_size, devices)


def batch_plan(batch_size: int, devices: int = 1, platform: str | None = None) -> tuple[tuple[int, int], ...]:
    """The (batch size, devices) a `Batcher` runs, ascending: full batches at `batch_size` (a multiple of
    `devices`) on every device, a shape's leftover at the smallest size that holds it (the padding dropped).

    CPU: every size, none padded, on the largest device count that divides it (a leftover of 3 on 8 devices: 3
    devices, one image each). Padding costs its share of compute there (3 images of 3 shapes at batch 8 took 6x as
    long padded), XLA already spreads one image over every core, and a CPU program compiles in seconds.
    GPU / TPU: `devices` times the powers of two below the per-device batch, then `batch_size`, on every device: at
    most log2(batch) + 1 programs per input shape, a leftover padded by less than 2x.
    """
    platform = platform or jax.default_backend()
    if platform == "cpu":
        return tuple((k, max(d for d in range(1, devices + 1) if k % d == 0)) for k in range(1, batch_size + 1))
    per_device = batch_size // devices
    powers = [2**k for k in range(per_device.bit_length()) if 2**k < per_device]
    return tuple((devices * k, devices) for k in (*powers, per_device))


class Programs:
    """`apply(params, batch)` through at most `kept` compiled programs, one per batch shape and mesh, the least
    recently used dropped first; `jit(mesh)` gives the jitted apply a new program is lowered from.

    Each compiled program holds host memory of its own (XLA CPU: ~20-30 MB per BEiT-B program, its executable),
    which jit's own cache keeps for every shape it ever saw: ten shapes of one stream held 240 MB. A dropped shape
    that comes back is compiled again, from the persistent compilation cache when it is on (`compile_cache.py`).
    `compiled` counts the compilations (cache loads included).
    """

    def __init__(self, jit: Callable[[Mesh], Any], kept: int) -> None:
        if isinstance(kept, bool) or not isinstance(kept, int) or kept < 1:
            raise ValueError(f"programs kept must be a positive int, got {kept!r}")
        self.jit, self.kept, self.compiled = jit, kept, 0
        self.programs: collections.OrderedDict[tuple, Any] = collections.OrderedDict()

    def __call__(self, params: Any, batch: jax.Array) -> jax.Array:
        key = (batch.shape, batch.dtype, batch.sharding)
        if key in self.programs:
            self.programs.move_to_end(key)
        else:
            while len(self.programs) >= self.kept:  # freed before the new one compiles
                self.programs.popitem(last=False)
            # a fresh jit per program: jax's caches hold a program for as long as its jitted function lives
            self.programs[key] = self.jit(batch.sharding.mesh).lower(params, batch).compile()
            self.compiled += 1
            release_free_memory()  # what compiling freed (and the dropped program) back to the OS
        return self.programs[key](params, batch)


def release_free_memory() -> None:
    """Return the C heap's free pages to the OS (glibc `malloc_trim`; nothing elsewhere). glibc keeps freed memory
    that lies between live allocations: the weights' host copy once they are placed, the temporaries of each compile
    among the programs kept. BEiT-B on CPU: 0.4 GB resident but free after the first image, without this."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


@functools.cache
def _libc() -> Any:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def programs_kept(platform: str) -> int:
    """Compiled programs a `Batcher` keeps by default (see `Programs`). CPU: 2 - each holds ~20-30 MB of host
    memory (BEiT-B) and comes back in ~2 s (trace, lower, load from the persistent cache); enough for a video or a
    camera's two orientations. GPU / TPU: 8 (a compile takes far longer; programs live in plentiful host memory)."""
    return 2 if platform == "cpu" else 8


def jitted_apply(model: nn.Module, devices: Devices | Mesh = None) -> Callable[[Any, jax.Array], jax.Array]:
    """`(params, images (B, H', W', 3) float32) -> (B, H', W') float32` on a mesh of local devices (default: all),
    params replicated, batch and result sharded along B (B a multiple of the device count). Jitted once per
    (model, mesh) per process; pass arrays placed with `jax.device_put(x, sharding)` (see `Batcher`).

    params are an argument, not a closure constant, so one compiled program serves every weights file of a config.
    """
    return _jitted_apply(model, devices if isinstance(devices, Mesh) else local_mesh(devices))


@functools.lru_cache(maxsize=16)
def _jitted_apply(model: nn.Module, mesh: Mesh) -> Callable[[Any, jax.Array], jax.Array]:
    return _new_jitted_apply(model, mesh)


def _new_jitted_apply(model: nn.Module, mesh: Mesh) -> Callable[[Any, jax.Array], jax.Array]:
    """`_jitted_apply` without the cache: a jit of a fresh function, whose traces and programs jax's own caches
    (keyed weakly on the function) let go when it goes."""

    def beit_depth(params: Any, images: jax.Array) -> jax.Array:  # the name shows in the persistent cache's keys
        return model.apply({"params": params}, images)

    batch = batch_sharded(mesh)
    return jax.jit(beit_depth, in_shardings=(replicated(mesh), batch), out_shardings=batch)


class Batcher:
    """Runs preprocessed images through the model in batches, one batch shape per input shape (and leftover size),
    each batch split over the devices of `mesh` (params replicated on each, placed once).

    `run` consumes `(meta, net_input (H', W', 3) float32)` pairs and yields `(meta, depth (H', W') float32)` once a
    batch of that shape is full (or at the end, at a size from `batch_plan`). One batch stays in flight: the host
    prepares and consumes the neighbouring batches while the device computes (JAX dispatch is asynchronous). Within
    one shape results come in input order; across shapes, in the order their batches fill up (leftovers at the end).

    batch_size: global, rounded up to a multiple of the device count (default: 1 per device on CPU, 8 per device
    on GPU / TPU). devices: None (every local device), N (the first N) or a list of local devices.
    programs: compiled programs kept (default `programs_kept`; see `Programs`).
    `shapes`: the distinct batch shapes run; `input_shapes`: the distinct (H', W').
    """

    def __init__(
        self,
        model: nn.Module,
        params: Any,
        batch_size: int | None = None,
        devices: Devices = None,
        programs: int | None = None,
    ) -> None:
        try:
            registry.of_model(model)
        except TypeError as err:
            raise ValueError(str(err)) from None
        self.model = model
        self.config = model.config
        self.mesh = local_mesh(devices)
        self.device_count = self.mesh.size
        self.batch_size = check_batch_size(batch_size, self.device_count)
        platform = self.mesh.devices.flat[0].platform
        self.batch_plan = batch_plan(self.batch_size, self.device_count, platform)
        kept = programs_kept(platform) if programs is None else programs
        self.apply = Programs(functools.partial(_new_jitted_apply, model), kept)
        self.batch_sharding = batch_sharded(self.mesh)
        # once: numpy params would be copied to every device on every call; a 16-bit model's kernels in its dtype
        self.params = place_replicated(precast(model, params), self.mesh)
        self._placements = {self.device_count: (self.params, self.batch_sharding)}  # device count -> placement
        self.shapes: set[tuple[int, ...]] = set()  # distinct batch shapes run

    def _placement(self, devices: int) -> tuple[Any, NamedSharding]:
        """(params, batch sharding) on the first `devices` devices of the mesh; the params share their buffers."""
        if devices not in self._placements:
            mesh = Mesh(self.mesh.devices[:devices], self.mesh.axis_names)
            self._placements[devices] = replicated_subset(self.params, mesh), batch_sharded(mesh)
        return self._placements[devices]

    @property
    def input_shapes(self) -> set[tuple[int, int]]:
        """The distinct network input shapes (H', W') run."""
        return {shape[1:3] for shape in self.shapes}

    def run(
        self, items: Iterable[tuple[M, np.ndarray]], on_error: Callable[[list[M], Exception], None] | None = None
    ) -> Iterator[tuple[M, np.ndarray]]:
        """Yield `(meta, depth (H', W'))` for each `(meta, net_input (H', W', 3))`.

        on_error: if given, a batch that fails on the device (e.g. out of memory for a huge panorama) is handed to
        it with its items' metadata and the run goes on; otherwise the error propagates.
        """
        pending: dict[tuple[int, ...], list[tuple[M, np.ndarray]]] = {}
        in_flight: collections.deque[tuple[list[M], jax.Array | Exception]] = collections.deque()
        for meta, image in items:
            interrupts.check()  # a Ctrl-C swallowed where it landed (a GC callback) stops the run at the next item
            bucket = pending.setdefault(image.shape, [])
            bucket.append((meta, image))
            if len(bucket) == self.batch_size:
                in_flight.append(self._launch(pending.pop(image.shape), on_error))
                if len(in_flight) > 1:
                    yield from self._collect(*in_flight.popleft(), on_error)
        for shape in list(pending):
            in_flight.append(self._launch(pending.pop(shape), on_error))
            if len(in_flight) > 1:  # one batch in flight here too: each holds a whole batch's activations
                yield from self._collect(*in_flight.popleft(), on_error)
        while in_flight:
            yield from self._collect(*in_flight.popleft(), on_error)

    def _launch(self, bucket: list[tuple[M, np.ndarray]], on_error) -> tuple[list[M], jax.Array | Exception]:
        metas, arrays = zip(*bucket)
        size, devices = next(plan for plan in self.batch_plan if plan[0] >= len(arrays))
        batch = pad_batch(arrays, size)  # zero padding (if any): its output is dropped
        self.shapes.add(batch.shape)
        try:
            # placed explicitly: jit refuses to shard numpy arguments once several processes exist; the call is
            # asynchronous and returns before the devices are done
            params, sharding = self._placement(devices)
            return list(metas), self.apply(params, jax.device_put(batch, sharding))
        except Exception as err:
            if on_error is None:
                raise
            return list(metas), err

    @staticmethod
    def _collect(metas: list[M], depth: jax.Array | Exception, on_error) -> Iterator[tuple[M, np.ndarray]]:
        try:
            if isinstance(depth, Exception):
                raise depth
            depth = np.asarray(depth, dtype=np.float32)  # waits for the device
        except Exception as err:
            if on_error is None:
                raise
            on_error(metas, err)
            return
        yield from zip(metas, depth[: len(metas)])
