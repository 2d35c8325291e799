"""The host pipeline, image -> depth: `predict` for lists of images, `Batcher` for streams, `ordered_map` for the
host work around them. `predict`, `beit-depth predict` and `beit-depth video` all run on these three.

Every image is preprocessed on the host (`transforms.preprocess`: MiDaS "minimal" resize to the net size), then
images are grouped by their network input shape (H', W') and run in batches of exactly `batch_size` (the last one
padded, the padding dropped), so each distinct shape compiles once per process. Each item travels with its own
metadata (`Batcher.run` hands back whatever the caller paired with the input: a file and the image's size, a video
frame), so no stage keeps state for another. The jitted apply is cached per model and device mesh, and `predict`
keeps the parameters it placed on the devices for the next call with the same parameters.

Data parallel (`sharding.py`): by default every local device runs; params are replicated on each, every batch is
split evenly over them along its first axis. `batch_size` is global (all devices together) and rounded up to a
multiple of the device count; `devices=N` uses the first N local devices only. With several processes
(`jax.distributed`), each runs on its own devices with the inputs it was given (`sharding.process_slice`).
"""

from __future__ import annotations

import collections
import functools
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

import jax
import numpy as np
from jax.sharding import Mesh

from beit_flax.models.dpt.dpt import DPT
from beit_flax.sharding import batch_sharded, local_mesh, pad_batch, replicated, round_up
from beit_flax.transforms import check_net_size, postprocess, preprocess

M = TypeVar("M")  # an item's metadata, carried through the pipeline with it
T = TypeVar("T")
R = TypeVar("R")

Devices = int | Sequence[jax.Device] | None


def ordered_map(fn: Callable[[T], R], items: Iterable[T], pool: ThreadPoolExecutor, limit: int) -> Iterator[R]:
    """`map(fn, items)` on `pool`, results in input order, each yielded as soon as it and every earlier one are done;
    at most `limit` results wait at once (they hold whole images, so the backlog stays bounded).

    Decoding, resizing and PNG encoding (Pillow, numpy) release the GIL, so this overlaps them with the device.
    `fn` should return errors rather than raise them (a raised error ends the map).
    """
    pending: collections.deque[Future[R]] = collections.deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        while pending and (pending[0].done() or len(pending) > limit):
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


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


def jitted_apply(model: DPT, devices: Devices | Mesh = None) -> Callable[[Any, jax.Array], jax.Array]:
    """`(params, images (B, H', W', 3) float32) -> (B, H', W') float32` on a mesh of local devices (default: all),
    params replicated, batch and result sharded along B (B a multiple of the device count). Jitted once per
    (model, mesh) per process; pass arrays placed with `jax.device_put(x, sharding)` (see `Batcher`).

    params are an argument, not a closure constant, so one compiled program serves every weights file of a config.
    """
    return _jitted_apply(model, devices if isinstance(devices, Mesh) else local_mesh(devices))


@functools.lru_cache(maxsize=16)
def _jitted_apply(model: DPT, mesh: Mesh) -> Callable[[Any, jax.Array], jax.Array]:
    def beit_depth(params: Any, images: jax.Array) -> jax.Array:  # the name shows in the persistent cache's keys
        return model.apply({"params": params}, images)

    batch = batch_sharded(mesh)
    return jax.jit(beit_depth, in_shardings=(replicated(mesh), batch), out_shardings=batch)


class Batcher:
    """Runs preprocessed images through the model in fixed-size batches, one batch shape per input shape, each
    batch split over the devices of `mesh` (params replicated on each, placed once).

    `run` consumes `(meta, net_input (H', W', 3) float32)` pairs and yields `(meta, depth (H', W') float32)` once a
    batch of that shape is full (or at the end, padded). One batch stays in flight: the host prepares and
    consumes the neighbouring batches while the device computes (JAX dispatch is asynchronous). Within one shape
    results come in input order; across shapes, in the order their batches fill up (leftovers at the end).

    batch_size: global, rounded up to a multiple of the device count (default: 1 per device on CPU, 8 per device
    on GPU / TPU). devices: None (every local device), N (the first N) or a list of local devices.
    """

    def __init__(self, model: DPT, params: Any, batch_size: int | None = None, devices: Devices = None) -> None:
        if not isinstance(model, DPT):
            raise ValueError(f"model must be a beit_flax DPT (from beit_flax.load), got {type(model).__name__}")
        self.model = model
        self.config = model.config
        self.mesh = local_mesh(devices)
        self.device_count = self.mesh.size
        self.batch_size = check_batch_size(batch_size, self.device_count)
        self.apply = _jitted_apply(model, self.mesh)
        self.batch_sharding = batch_sharded(self.mesh)
        # once: numpy params would be copied to every device on every call
        self.params = jax.device_put(params, replicated(self.mesh))
        self.shapes: set[tuple[int, ...]] = set()  # distinct batch shapes run (each compiled at most once)

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
            bucket = pending.setdefault(image.shape, [])
            bucket.append((meta, image))
            if len(bucket) == self.batch_size:
                in_flight.append(self._launch(pending.pop(image.shape), on_error))
                if len(in_flight) > 1:
                    yield from self._collect(*in_flight.popleft(), on_error)
        for shape in list(pending):
            in_flight.append(self._launch(pending.pop(shape), on_error))
        while in_flight:
            yield from self._collect(*in_flight.popleft(), on_error)

    def _launch(self, bucket: list[tuple[M, np.ndarray]], on_error) -> tuple[list[M], jax.Array | Exception]:
        metas, arrays = zip(*bucket)
        batch = pad_batch(arrays, self.batch_size)  # zero padding: its output is dropped
        self.shapes.add(batch.shape)
        try:
            # placed explicitly: jit refuses to shard numpy arguments once several processes exist; the call is
            # asynchronous and returns before the devices are done
            return list(metas), self.apply(self.params, jax.device_put(batch, self.batch_sharding))
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


def as_image_list(images: Any) -> list[np.ndarray]:
    """`predict`'s input check: a list of (H, W, 3) arrays (uint8, uint16 or float in [0, 1]), or one (B, H, W, 3)
    array -> a list of arrays. ValueError with the index and shape of the first bad one."""
    if not isinstance(images, (list, tuple)) and hasattr(images, "__array__"):  # numpy, jax, ... arrays
        array = np.asarray(images)
        if array.ndim == 4:
            return list(array)
        raise ValueError(
            f"images must be a list of (H, W, 3) arrays or one (B, H, W, 3) array; got one array of shape "
            f"{array.shape} (wrap a single image in a list)"
        )
    if not isinstance(images, Sequence) or isinstance(images, (str, bytes)):
        raise ValueError(f"images must be a list of (H, W, 3) arrays; got {type(images).__name__}")
    checked = []
    for i, image in enumerate(images):
        array = np.asarray(image)
        if array.ndim != 3 or array.shape[-1] != 3 or min(array.shape[:2]) < 1:
            raise ValueError(f"images[{i}] must be an (H, W, 3) RGB array with H, W >= 1; got shape {array.shape}")
        if not (array.dtype in (np.uint8, np.uint16) or np.issubdtype(array.dtype, np.floating)):
            raise ValueError(
                f"images[{i}] must be uint8, uint16 or float in [0, 1]; got dtype {array.dtype} (shape {array.shape})"
            )
        checked.append(array)
    return checked


# `predict`'s device-resident parameters: the last few Batchers, each with the parameter leaves it was built from
# (held, so their ids cannot be reused while the entry lives). A call with the same model, the same leaves (by
# identity) and the same batch / device settings reuses the placed copy instead of copying every parameter to every
# device again (1.4 GB per call for BEiT-L).
_BATCHERS: collections.OrderedDict[tuple, tuple[list[Any], Batcher]] = collections.OrderedDict()
_BATCHERS_KEPT = 2


def _batcher(model: DPT, params: Any, batch_size: int | None, devices: Devices) -> Batcher:
    leaves, treedef = jax.tree.flatten(params)
    device_key = devices if devices is None or isinstance(devices, int) else tuple(d.id for d in devices)
    key = (model, treedef, tuple(map(id, leaves)), batch_size, device_key)
    if key in _BATCHERS:
        _BATCHERS.move_to_end(key)
        return _BATCHERS[key][1]
    batcher = Batcher(model, params, batch_size, devices)
    _BATCHERS[key] = (leaves, batcher)
    while len(_BATCHERS) > _BATCHERS_KEPT:
        _BATCHERS.popitem(last=False)
    return batcher


def clear_device_params() -> None:
    """Drop the device copies of parameters that `predict` keeps for its next call (frees device memory)."""
    _BATCHERS.clear()


def predict(
    model: DPT,
    params: Any,
    images: Sequence[np.ndarray] | np.ndarray,
    *,
    batch_size: int | None = None,
    square: bool = False,
    net_size: int | None = None,
    devices: Devices = None,
) -> list[np.ndarray]:
    """Relative inverse depth for each image, at the image's own size (MiDaS run.py pre- and post-processing).

    images: list of (H, W, 3) RGB arrays, uint8 (or uint16 / float in [0, 1]); sizes may differ.
    Returns a list of (H, W) float32 arrays, larger = nearer. `net_size` defaults to the model's (512 or 384);
    `square` resizes to net x net instead of keeping the aspect ratio. Batches of one input shape are padded to
    `batch_size` (default: 1 per device on CPU, 8 per device otherwise), so each shape compiles once.
    devices: every local device by default (params replicated, each batch split over them), N for the first N, or
    a list of local devices; `batch_size` is global and rounded up to a multiple of the device count.
    The parameters are placed on the devices once and kept for the next call with the same `params` (the same
    arrays; `clear_device_params()` frees them).
    Raises ValueError (with the shape received) for anything that is not a list of RGB images.
    """
    images = as_image_list(images)
    if not images:
        return []
    batcher = _batcher(model, params, batch_size, devices)
    net = check_net_size(model.config.net_size if net_size is None else net_size)
    # lazy: preprocessing overlaps the device; each input carries its index and its image's size
    inputs = (((i, image.shape[:2]), preprocess(image, net, square=square)) for i, image in enumerate(images))
    out: list[np.ndarray | None] = [None] * len(images)
    for (i, size_hw), depth in batcher.run(inputs):
        out[i] = postprocess(depth, size_hw)
    return out  # type: ignore[return-value]
