"""A depth model loaded and placed once, with `beit-depth`'s preprocessing: images in, full-size depth maps out.

`Predictor` is what the CLI's `predict` and `video` and the web demo share, so that the three give the same numbers:
MiDaS (DPT) files give relative inverse depth (larger = nearer) preprocessed as MiDaS run.py; ZoeDepth files give
meters preprocessed as ZoeDepth's `infer_pil` (reflect padding, flip averaging).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

import numpy as np

from beit_flax.compile_cache import enable_compilation_cache
from beit_flax.hub import resolve
from beit_flax.models.zoedepth.zoedepth import ZoeDepth
from beit_flax.pipeline import Batcher
from beit_flax.transforms import (
    DEFAULT_MAX_PIXELS,
    check_net_input,
    check_net_size,
    postprocess,
    preprocess,
    target_size,
)
from beit_flax.weights import load
from beit_flax.zoedepth_pipeline import check_net_hw, depth_range_m, grouped
from beit_flax.zoedepth_transforms import merge, pad_sizes, preprocess_views
from beit_flax.zoedepth_transforms import target_size as zoedepth_target_size

M = TypeVar("M")


class Predictor:
    """Loads `weights` (anything `beit-depth --weights` takes) and places it on the devices once.

    size: the net size (MiDaS: the side to resize towards; ZoeDepth: N x N; default the model's). square: MiDaS'
    N x N resize / ZoeDepth without keeping the aspect ratio. pad / flip: ZoeDepth's infer_pil steps (a MiDaS file
    with either False is refused). Raises ValueError or OSError with a one-line message (`cannot load weights:
    ...` when the file is at fault).
    """

    def __init__(
        self,
        weights: str | os.PathLike,
        *,
        size: int | None = None,
        square: bool = False,
        dtype: str = "float32",
        pad: bool = True,
        flip: bool = True,
        batch_size: int | None = None,
        devices: int | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        progress: bool = False,
    ) -> None:
        if size is not None:
            check_net_size(size, max_pixels)
        try:
            model, params = load(resolve(weights, progress=progress), dtype=dtype)
        except (OSError, ValueError) as err:
            raise ValueError(f"cannot load weights: {err}") from err
        self.metric = isinstance(model, ZoeDepth)
        if not self.metric and not (pad and flip):
            raise ValueError(f"--no-pad / --no-flip are ZoeDepth options; {weights} is a MiDaS (relative depth) model")
        try:
            if self.metric:
                self.net: Any = check_net_hw(size or model.config.net_size)
                check_net_input(self.net, max_pixels)
            else:
                self.net = size or check_net_size(model.config.net_size, max_pixels)
        except ValueError as err:
            raise ValueError(f"{weights}: the model's {err}") from None
        self.square, self.pad, self.flip, self.max_pixels = square, pad, flip, max_pixels
        self.top_m: float | None = depth_range_m(model.config) if self.metric else None
        enable_compilation_cache()
        try:
            self.batcher = Batcher(model, params, batch_size, devices)
        except ValueError as err:  # more devices asked for than there are
            raise ValueError(f"--devices {devices}: {err}") from None

    def network_size(self, height: int, width: int) -> tuple[int, int]:
        """The network input (H', W') of a (height, width) image (ZoeDepth's: of the padded image)."""
        if not self.metric:
            return target_size(height, width, self.net, square=self.square)
        pad_h, pad_w = pad_sizes(height, width, self.pad)
        return zoedepth_target_size(height + 2 * pad_h, width + 2 * pad_w, self.net, keep_aspect=not self.square)

    def check(self, height: int, width: int) -> None:
        """ValueError when an image of this size needs a network input over `max_pixels`."""
        check_net_input(self.network_size(height, width), self.max_pixels)

    def inputs(self, image: np.ndarray, index: int = 0) -> list:
        """[(view or None, network input)]: ZoeDepth's views of the image (plain, flipped), or MiDaS' one input."""
        if self.metric:
            return preprocess_views(
                image, self.net, index=index, pad=self.pad, flip=self.flip, keep_aspect=not self.square
            )
        return [(None, preprocess(image, self.net, square=self.square))]

    def run(
        self, prepared: Iterable[tuple[M, tuple[int, int], list]], on_error=None
    ) -> Iterator[tuple[M, tuple[int, int], list]]:
        """Stream `(meta, image (H, W), self.inputs(image, index))` -> `(meta, (H, W), parts)`, batched on the
        devices; one shape's results come in input order. The host work around the device is the caller's, so that
        it can run in worker threads: `inputs` before, `finish(size_hw, parts)` (the full-size depth map) after.
        on_error: as `Batcher.run`'s, given the metas of a failed batch."""

        def network_items() -> Iterator:
            for meta, size_hw, inputs in prepared:
                for view, net_input in inputs:
                    yield (meta, size_hw, view), net_input

        def failed(keys: list, err: Exception) -> None:
            on_error([meta for meta, _, _ in keys], err)  # ZoeDepth: an image's views may both be there

        results = self.batcher.run(network_items(), on_error=failed if on_error else None)
        if self.metric:
            keyed = ((((meta, size_hw), view), depth) for (meta, size_hw, view), depth in results)
            for (meta, size_hw), views in grouped(keyed, 2 if self.flip else 1):
                yield meta, size_hw, views
        else:
            for (meta, size_hw, view), depth in results:
                yield meta, size_hw, [(view, depth)]

    def finish(self, size_hw: tuple[int, int], parts: list) -> np.ndarray:
        """An image's network outputs -> (H, W) float32: meters (ZoeDepth: its views merged, the padding cropped)
        or relative inverse depth (MiDaS: bicubic to the image's size, as run.py)."""
        return merge(parts) if self.metric else postprocess(parts[0][1], size_hw)

    def depth(self, image: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 (or uint16) image -> (H, W) float32 depth, exactly `beit-depth predict`'s .npy."""
        self.check(*image.shape[:2])
        ((_, size_hw, parts),) = self.run([(None, image.shape[:2], self.inputs(image))])
        return self.finish(size_hw, parts)

    def describe(self) -> str:
        batcher = self.batcher
        n = batcher.device_count
        return f"batch {batcher.batch_size} on {n} {batcher.mesh.devices.flat[0].platform} device{'s' * (n != 1)}"
