"""The host pipeline, image -> depth: `predict` for lists of images, `run_images` / `run_prepared` for streams,
`ordered_map` for the host work around them. `predict`, `Predictor`, `beit-depth predict` and `beit-depth video` all
run on these.

Every image is preprocessed on the host by its model family's `Processing` (MiDaS run.py's resize, ZoeDepth's
padded and flipped views, ...) into one or more network inputs, which a `Batcher` (`batcher.py`) groups by shape
(H', W') and runs in batches on the devices; each image's views meet again in `per_image` and the family's
`finish` turns them into the map at the image's size. Each item travels with its own metadata (whatever the caller
paired with the input: a file and the image's size, a video frame), so no stage keeps state for another. `predict`
keeps the parameters it placed on the devices for the next call with the same parameters. With several processes
(`jax.distributed`), each runs on its own devices with the inputs it was given (`sharding.process_slice`).
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

import flax.linen as nn
import jax
import numpy as np

from beit_flax.batcher import Batcher, Devices
from beit_flax.models import registry
from beit_flax.models.family import Processing

M = TypeVar("M")  # an item's metadata, carried through the pipeline with it
T = TypeVar("T")
R = TypeVar("R")


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


def as_image_list(images: Any) -> list[np.ndarray]:
    """`predict`'s input check: a list of (H, W, 3) arrays (uint8, uint16 or float in [0, 1]), or one (B, H, W, 3)
    array -> a list of arrays. ValueError with the index and shape of the first bad one; the same rules for both
    forms (dtype: uint8, uint16 or a real float, whose values must lie in [0, 1])."""
    if not isinstance(images, (list, tuple)) and hasattr(images, "__array__"):  # numpy, jax, ... arrays
        array = np.asarray(images)
        if array.ndim == 4:
            return as_image_list(list(array))
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
        if np.issubdtype(array.dtype, np.floating) and array.size:
            low, high = float(np.min(array)), float(np.max(array))  # NaN makes both NaN: refused too
            if not (low >= 0.0 and high <= 1.0):
                raise ValueError(
                    f"images[{i}] is float with values in [{low:g}, {high:g}]; float images must be in [0, 1]"
                )
        checked.append(array)
    return checked


# `predict`'s device-resident parameters: the last few Batchers, each with the parameter leaves it was built from
# (held, so their ids cannot be reused while the entry lives). A call with the same model, the same leaves (by
# identity) and the same batch / device settings reuses the placed copy instead of copying every parameter to every
# device again (1.4 GB per call for BEiT-L).
_BATCHERS: collections.OrderedDict[tuple, tuple[list[Any], Batcher]] = collections.OrderedDict()
_BATCHERS_KEPT = 2


def _batcher(model: nn.Module, params: Any, batch_size: int | None, devices: Devices) -> Batcher:
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


def per_image(results: Iterable[tuple[tuple[int, int], Any]], views: int) -> Iterator[tuple[int, list[Any]]]:
    """`((image serial, view position), result)` -> `(serial, [result of view 0, 1, ...])` once all `views` of an
    image are in. An image's views have the same shape, so they meet in one bucket and come back together or in
    neighbouring batches: only a batch's worth waits here."""
    waiting: dict[int, dict[int, Any]] = {}
    for (serial, position), result in results:
        parts = waiting.setdefault(serial, {})
        parts[position] = result
        if len(parts) == views:
            del waiting[serial]
            yield serial, [parts[k] for k in range(views)]


def predict(
    model: nn.Module,
    params: Any,
    images: Sequence[np.ndarray] | np.ndarray,
    *,
    batch_size: int | None = None,
    square: bool = False,
    net_size: int | tuple[int, int] | None = None,
    devices: Devices = None,
    pad: bool | None = None,
    flip: bool | None = None,
) -> list[np.ndarray]:
    """Each image's depth map at the image's own size, with its model family's pre- and post-processing: relative
    inverse depth for MiDaS (run.py's steps), meters for ZoeDepth (`infer_pil`'s: padding, flip averaging);
    `registry.of_model(model).output(model.config)` says what the maps mean.

    images: list of (H, W, 3) RGB arrays, uint8 (or uint16 / float in [0, 1]); sizes may differ.
    Returns a list of (H, W) float32 arrays, larger = nearer for relative depth. `net_size` defaults to the model's
    (MiDaS: an int side, 512 or 384; ZoeDepth: an int N for N x N or (H, W), default 384 x 512, K: 384 x 768);
    `square` resizes to the net size without keeping the aspect ratio. `pad` (reflect padding) and `flip` (the
    flipped image's depth averaged in): the family's test-time options, None for its own default (ZoeDepth: both
    on); a ValueError for a family whose pipeline has none (MiDaS).
    Images of one input shape run in batches of `batch_size` (default: 1 per device on CPU, 8 per device
    otherwise), a leftover at a size from `batch_plan`. devices: every local device by default (params replicated,
    each batch split over them), N for the first N, or a list of local devices; `batch_size` is global and rounded
    up to a multiple of the device count. The parameters are placed on the devices once and kept for the next call
    with the same `params` (the same arrays; `clear_device_params()` frees them).
    Raises ValueError (with the shape received) for anything that is not a list of RGB images.
    """
    images = as_image_list(images)
    try:
        family = registry.of_model(model)
    except TypeError as err:
        raise ValueError(str(err)) from None
    processing = family.processing(model.config, size=net_size, square=square, pad=pad, flip=flip)
    if not images:
        return []
    batcher = _batcher(model, params, batch_size, devices)
    out: list[np.ndarray | None] = [None] * len(images)
    for (i, size_hw), parts in run_images(batcher, processing, ((i, image) for i, image in enumerate(images))):
        out[i] = processing.finish(size_hw, parts)
    return out  # type: ignore[return-value]


def run_images(
    batcher: Batcher,
    processing: Processing,
    images: Iterable[tuple[M, np.ndarray]],
    on_error: Callable[[list[M], Exception], None] | None = None,
) -> Iterator[tuple[tuple[M, tuple[int, int]], list[tuple[Any, np.ndarray]]]]:
    """`(meta, image)` -> `((meta, image (H, W)), [(view, network output)...])`, ready for `processing.finish`;
    preprocessing is lazy (it overlaps the device). `meta` must identify the image (an index)."""
    prepared = (((meta, image.shape[:2]), processing.inputs(image)) for meta, image in images)
    yield from run_prepared(batcher, processing.views, prepared, on_error)


def run_prepared(
    batcher: Batcher,
    views: int,
    prepared: Iterable[tuple[M, list[tuple[Any, np.ndarray]]]],
    on_error: Callable[[list[M], Exception], None] | None = None,
) -> Iterator[tuple[M, list[tuple[Any, np.ndarray]]]]:
    """`(meta, [(view, network input)...])` per image (`Processing.inputs`, done by the caller, e.g. in worker
    threads) -> `(meta, [(view, network output)...])` in the same view order, batched on the devices; one shape's
    images come back in input order. on_error: as `Batcher.run`'s, given each failed image's meta once."""
    metas: dict[int, M] = {}  # serial -> meta, while the image's views are in flight

    def network_items() -> Iterator[tuple[tuple[int, int, Any], np.ndarray]]:
        for serial, (meta, inputs) in enumerate(prepared):
            metas[serial] = meta
            for position, (view, net_input) in enumerate(inputs):
                yield (serial, position, view), net_input

    def failed(keys: list[tuple[int, int, Any]], err: Exception) -> None:
        serials = dict.fromkeys(serial for serial, _, _ in keys)  # an image's views may both be there
        gone = [metas.pop(serial) for serial in serials if serial in metas]
        if gone:
            on_error(gone, err)

    results = batcher.run(network_items(), on_error=failed if on_error else None)
    keyed = (((serial, position), (view, output)) for (serial, position, view), output in results)
    for serial, parts in per_image(keyed, views):
        if serial in metas:  # not failed with an earlier batch
            yield metas.pop(serial), parts
