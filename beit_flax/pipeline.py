"""Image -> depth: `predict` for lists of images, `Batcher` for streams (the CLI and video use it).

Every image is preprocessed on the host (`transforms.preprocess`: MiDaS "minimal" resize to the net size), then
images are grouped by their network input shape (H', W') and run in batches of exactly `batch_size` (the last one
padded, the padding dropped), so each distinct shape compiles once per process. The jitted apply is cached per
config and device mesh; `enable_compilation_cache` adds JAX's persistent cache so a second process skips compiling.

Data parallel (`sharding.py`): by default every local device runs; params are replicated on each, every batch is
split evenly over them along its first axis. `batch_size` is global (all devices together) and rounded up to a
multiple of the device count; `devices=N` uses the first N local devices only. With several processes
(`jax.distributed`), each runs on its own devices with the inputs it was given (`sharding.process_slice`).
"""

from __future__ import annotations

import collections
import functools
import os
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh

from beit_flax.models.dpt.config import DPTConfig
from beit_flax.models.dpt.dpt import DPT
from beit_flax.sharding import batch_sharded, local_mesh, pad_batch, replicated, round_up
from beit_flax.transforms import postprocess, preprocess

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")
R = TypeVar("R")

CACHE_ENV = "BEIT_FLAX_CACHE_DIR"  # a directory, or "off" to leave JAX's persistent cache alone
_OFF = {"", "0", "off", "none", "false", "no"}


def default_batch_size(devices: int = 1) -> int:
    """Per device: 1 on CPU (XLA already spreads one image over all cores; padding would only cost), 8 on GPU /
    TPU; times the number of devices."""
    return (1 if jax.default_backend() == "cpu" else 8) * devices


def jitted_apply(model: DPT, devices: int | Sequence[jax.Device] | Mesh | None = None
                 ) -> Callable[[Any, jax.Array], jax.Array]:
    """`(params, images (B, H', W', 3) float32) -> (B, H', W') float32` on a mesh of local devices (default: all),
    params replicated, batch and result sharded along B (B a multiple of the device count). Jitted once per
    (config, mesh) per process; pass arrays placed with `jax.device_put(x, sharding)` (see `Batcher`).

    params are an argument, not a closure constant, so one compiled program serves every weights file of a config.
    """
    return _jitted_apply(model, devices if isinstance(devices, Mesh) else local_mesh(devices))


@functools.lru_cache(maxsize=16)
def _jitted_apply(model: DPT, mesh: Mesh) -> Callable[[Any, jax.Array], jax.Array]:
    def beit_depth(params: Any, images: jax.Array) -> jax.Array:  # the name shows in the persistent cache's keys
        return model.apply({"params": params}, images)

    batch = batch_sharded(mesh)
    return jax.jit(beit_depth, in_shardings=(replicated(mesh), batch), out_shardings=batch)


def enable_compilation_cache(path: str | os.PathLike | None = None) -> Path | None:
    """Turn on JAX's persistent compilation cache, so a second process loads compiled programs instead of compiling.

    Directory: `path`, else $BEIT_FLAX_CACHE_DIR, else JAX's own setting ($JAX_COMPILATION_CACHE_DIR), else
    ~/.cache/beit-flax/jax ($XDG_CACHE_HOME respected). BEIT_FLAX_CACHE_DIR=off disables it. Every compile is
    cached (CPU compiles are short but still seconds). Returns the directory in use, or None.
    """
    env = os.environ.get(CACHE_ENV)
    if path is None and env is not None and env.strip().lower() in _OFF:
        return None
    current = jax.config.jax_compilation_cache_dir
    if path is None and env is None and current:
        chosen = Path(current)
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        chosen = Path(path or env or base / "beit-flax" / "jax").expanduser()
    try:
        chosen.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None  # a read-only home must not stop inference; it only costs the compile
    jax.config.update("jax_compilation_cache_dir", str(chosen))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return chosen


def check_batch_size(batch_size: int | None, devices: int = 1) -> int:
    """The global batch size: `batch_size` rounded up to a multiple of `devices`, or the default for them."""
    if batch_size is None:
        return default_batch_size(devices)
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    return round_up(batch_size, devices)


def check_net_size(net_size: int | None, config: DPTConfig) -> int:
    if net_size is None:
        return config.net_size
    if isinstance(net_size, bool) or not isinstance(net_size, (int, np.integer)) or net_size < 32:
        raise ValueError(f"net_size must be an int >= 32, got {net_size!r}")
    return int(net_size)


class Batcher:
    """Runs preprocessed images through the model in fixed-size batches, one batch shape per input shape, each
    batch split over the devices of `mesh` (params replicated on each).

    `run` consumes `(key, net_input (H', W', 3) float32)` pairs and yields `(key, depth (H', W') float32)` once a
    batch of that shape is full (or at the end, padded). One batch stays in flight: the host prepares and
    consumes the neighbouring batches while the device computes (JAX dispatch is asynchronous). Within one shape
    results come in input order; across shapes, in the order their batches fill up (leftovers at the end).

    batch_size: global, rounded up to a multiple of the device count (default: 1 per device on CPU, 8 per device
    on GPU / TPU). devices: None (every local device), N (the first N) or a list of local devices.
    """

    def __init__(
        self,
        model: nn.Module,
        params: Any,
        batch_size: int | None = None,
        devices: int | Sequence[jax.Device] | None = None,
    ) -> None:
        config = getattr(model, "config", None)
        if not isinstance(config, DPTConfig):
            raise ValueError(f"model must be a beit_flax DPT (from beit_flax.load), got {type(model).__name__}")
        self.config = config
        self.mesh = local_mesh(devices)
        self.device_count = self.mesh.size
        self.batch_size = check_batch_size(batch_size, self.device_count)
        self.apply = _jitted_apply(model, self.mesh)
        self.batch_sharding = batch_sharded(self.mesh)
        # once: numpy params would be copied to every device on every call
        self.params = jax.device_put(params, replicated(self.mesh))
        self.shapes: set[tuple[int, ...]] = set()  # distinct batch shapes run (each compiled at most once)

    def run(
        self, items: Iterable[tuple[K, np.ndarray]], on_error: Callable[[list[K], Exception], None] | None = None
    ) -> Iterator[tuple[K, np.ndarray]]:
        """Yield `(key, depth (H', W'))` for each `(key, net_input (H', W', 3))`.

        on_error: if given, a batch that fails on the device (e.g. out of memory for a huge panorama) is handed to
        it with its keys and the run goes on; otherwise the error propagates.
        """
        pending: dict[tuple[int, ...], list[tuple[K, np.ndarray]]] = {}
        in_flight: collections.deque[tuple[list[K], jax.Array | Exception]] = collections.deque()
        for key, image in items:
            bucket = pending.setdefault(image.shape, [])
            bucket.append((key, image))
            if len(bucket) == self.batch_size:
                in_flight.append(self._launch(pending.pop(image.shape), on_error))
                if len(in_flight) > 1:
                    yield from self._collect(*in_flight.popleft(), on_error)
        for shape in list(pending):
            in_flight.append(self._launch(pending.pop(shape), on_error))
        while in_flight:
            yield from self._collect(*in_flight.popleft(), on_error)

    def _launch(self, bucket: list[tuple[K, np.ndarray]], on_error) -> tuple[list[K], jax.Array | Exception]:
        keys, arrays = zip(*bucket)
        batch = pad_batch(arrays, self.batch_size)  # zero padding: its output is dropped
        self.shapes.add(batch.shape)
        try:
            # placed explicitly: jit refuses to shard numpy arguments once several processes exist; the call is
            # asynchronous and returns before the devices are done
            return list(keys), self.apply(self.params, jax.device_put(batch, self.batch_sharding))
        except Exception as err:
            if on_error is None:
                raise
            return list(keys), err

    @staticmethod
    def _collect(keys: list[K], depth: jax.Array | Exception, on_error) -> Iterator[tuple[K, np.ndarray]]:
        try:
            if isinstance(depth, Exception):
                raise depth
            depth = np.asarray(depth, dtype=np.float32)  # waits for the device
        except Exception as err:
            if on_error is None:
                raise
            on_error(keys, err)
            return
        yield from zip(keys, depth[: len(keys)])


def check_images(images: Any) -> list[np.ndarray]:
    """A list of (H, W, 3) arrays (uint8, uint16 or float in [0, 1]), or one (B, H, W, 3) array -> list."""
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


def predict(
    model: nn.Module,
    params: Any,
    images: Sequence[np.ndarray] | np.ndarray,
    *,
    batch_size: int | None = None,
    square: bool = False,
    net_size: int | None = None,
    devices: int | Sequence[jax.Device] | None = None,
) -> list[np.ndarray]:
    """Relative inverse depth for each image, at the image's own size (MiDaS run.py pre- and post-processing).

    images: list of (H, W, 3) RGB arrays, uint8 (or uint16 / float in [0, 1]); sizes may differ.
    Returns a list of (H, W) float32 arrays, larger = nearer. `net_size` defaults to the model's (512 or 384);
    `square` resizes to net x net instead of keeping the aspect ratio. Batches of one input shape are padded to
    `batch_size` (default: 1 per device on CPU, 8 per device otherwise), so each shape compiles once.
    devices: every local device by default (params replicated, each batch split over them), N for the first N, or
    a list of local devices; `batch_size` is global and rounded up to a multiple of the device count.
    Raises ValueError (with the shape received) for anything that is not a list of RGB images.
    """
    images = check_images(images)
    if not images:
        return []
    batcher = Batcher(model, params, batch_size, devices)
    net = check_net_size(net_size, batcher.config)
    inputs = ((i, preprocess(image, net, square=square)) for i, image in enumerate(images))  # lazy: overlaps
    out: list[np.ndarray | None] = [None] * len(images)
    for i, depth in batcher.run(inputs):
        out[i] = postprocess(depth, images[i].shape[:2])
    return out  # type: ignore[return-value]


def prefetch(fn: Callable[[T], R], items: Iterable[T], workers: int, depth: int) -> Iterator[R]:
    """`map(fn, items)` on `workers` threads, in order, with at most `depth` results ahead of the consumer.

    Decoding and resizing (Pillow, numpy) release the GIL, so this overlaps them with device compute without
    holding the whole input set in memory. `fn` should return errors rather than raise them.
    """
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="beit-prefetch") as pool:
        queue: collections.deque[Future[R]] = collections.deque()
        for item in items:
            queue.append(pool.submit(fn, item))
            if len(queue) >= depth:
                yield queue.popleft().result()
        while queue:
            yield queue.popleft().result()
