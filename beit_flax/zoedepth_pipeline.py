"""ZoeDepth on the shared pipeline (`pipeline.Batcher`, `ordered_map`): each image becomes one or two network inputs
(`zoedepth_transforms.preprocess_views`: plain and flipped), each carrying `(caller's metadata, ViewMeta)`;
`grouped` collects an image's views as they come back from the `Batcher`, and `merge` (on the caller's workers)
turns them into the image's metric depth. `beit_flax.predict` and `beit-depth predict / video` use these.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any, TypeVar

import numpy as np

from beit_flax.zoedepth_transforms import ViewMeta, merge, preprocess_views

M = TypeVar("M")


def check_net_hw(net_size: int | Sequence[int]) -> tuple[int, int]:
    """A ZoeDepth net size: an int N (N x N, as the original's `img_size=N`) or (H, W), each at least 32."""
    sides = (net_size, net_size) if isinstance(net_size, (int, np.integer)) else tuple(net_size)
    if len(sides) != 2 or any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 32 for s in sides):
        raise ValueError(f"net size must be an int or (H, W) of ints >= 32, got {net_size!r}")
    return int(sides[0]), int(sides[1])


def depth_range_m(config: Any) -> float:
    """The top of the fixed colour range of a ZoeDepth's maps, meters: the largest `max_depth` of its bin heads
    (N: 10, K: 10 as the original builds it, NK: 80). Its "softplus" bins can go beyond: those pixels show as far."""
    return max(b.max_depth for b in config.bins)


def grouped(
    results: Iterable[tuple[tuple[M, ViewMeta], np.ndarray]], views: int
) -> Iterator[tuple[M, list[tuple[ViewMeta, np.ndarray]]]]:
    """`Batcher.run`'s `((meta, ViewMeta), depth)` -> `(meta, [(ViewMeta, depth), ...])` once all `views` of an
    image (by `ViewMeta.index`) are in. An image's views have the same shape, so they meet in one bucket and come
    back together or in neighbouring batches: only a batch's worth waits here."""
    waiting: dict[int, list[tuple[ViewMeta, np.ndarray]]] = {}
    for (meta, view), depth in results:
        parts = waiting.setdefault(view.index, [])
        parts.append((view, depth))
        if len(parts) == views:
            del waiting[view.index]
            yield meta, sorted(parts, key=lambda p: p[0].flip)


def predict_zoedepth(
    batcher: Any,
    images: Sequence[np.ndarray],
    net_hw: tuple[int, int],
    *,
    pad: bool = True,
    flip: bool = True,
    keep_aspect: bool = True,
) -> list[np.ndarray]:
    """Metric depth (H, W) float32 meters per image at its own size, through `batcher` (a ZoeDepth `Batcher`)."""
    inputs = (
        ((i, view), net_input)
        for i, image in enumerate(images)
        for view, net_input in preprocess_views(image, net_hw, index=i, pad=pad, flip=flip, keep_aspect=keep_aspect)
    )
    out: list[np.ndarray | None] = [None] * len(images)
    for i, views in grouped(batcher.run(inputs), 2 if flip else 1):
        out[i] = merge(views)
    return out  # type: ignore[return-value]
