"""A depth model loaded and placed once, with its family's preprocessing: images in, full-size depth maps out.

`Predictor` is what the CLI's `predict` and `video` and the web demo share, so that the three give the same numbers.
What the maps are and how they are made is the model family's (`models.registry`): MiDaS files give relative inverse
depth (larger = nearer) preprocessed as MiDaS run.py; ZoeDepth files give meters preprocessed as ZoeDepth's
`infer_pil` (reflect padding, flip averaging). `output` says which (`models.depth_output`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import numpy as np

from beit_flax.arguments import report
from beit_flax.batcher import Batcher
from beit_flax.compile_cache import enable_compilation_cache
from beit_flax.hub import resolve
from beit_flax.hub.sources import KNOWN
from beit_flax.models import registry
from beit_flax.pipeline import run_prepared
from beit_flax.runtimes import RuntimeBatcher, check_runtime
from beit_flax.transforms import DEFAULT_MAX_PIXELS, check_net_input, check_net_size
from beit_flax.weights import load

M = TypeVar("M")


class Predictor:
    """Loads `weights` (anything `beit-depth --weights` takes) and places it on the devices once.

    size: the net size (default the model's; MiDaS: the side to resize towards; ZoeDepth: N x N). square: resize
    without keeping the aspect ratio. pad / flip: False turns off a family's test-time padding / flip averaging
    (ZoeDepth's infer_pil steps; refused for a family without them), None keeps its default. runtime: "jax" (the
    jitted model on every device), or "onnxruntime" / "openvino": its ONNX export on the CPU (`runtimes`; float32,
    OpenVINO bfloat16 too; one device). Raises ValueError or OSError with a one-line message (`cannot load weights:
    ...` when the file is at fault).

    Attributes: `family` (`models.family.Family`), `output` (what the maps mean: `depth_output.DepthOutput`),
    `processing` (the family's `Processing` for these options), `batcher` (the placed model).
    """

    def __init__(
        self,
        weights: str | os.PathLike,
        *,
        size: int | None = None,
        square: bool = False,
        dtype: str = "float32",
        pad: bool | None = None,
        flip: bool | None = None,
        batch_size: int | None = None,
        devices: int | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        progress: bool = False,
        runtime: str = "jax",
    ) -> None:
        if size is not None:
            check_net_size(size, max_pixels)
        check_runtime(runtime, dtype)  # before any download or conversion
        if runtime != "jax" and devices is not None:
            raise ValueError(f"--devices is for --runtime jax; {runtime} runs on the CPU")
        try:
            model, params = load(resolve(weights, progress=progress), dtype=dtype)
        except (OSError, ValueError) as err:
            raise ValueError(f"cannot load weights: {err}") from err
        self.family = registry.of_model(model)
        try:
            self.processing = self.family.processing(model.config, size=size, square=square, pad=pad, flip=flip)
        except ValueError as err:
            raise ValueError(f"{weights}: {err}") from None
        try:
            net = self.processing.net  # a side (N x N) or (H, W)
            check_net_size(net, max_pixels) if isinstance(net, int) else check_net_input(tuple(net), max_pixels)
        except ValueError as err:
            raise ValueError(f"{weights}: the model's {err}") from None
        self.output = self.family.output(model.config)
        self.max_pixels = max_pixels
        known = KNOWN.get(str(weights))
        self.licence = known.licence if known else None  # a released model's, when named
        enable_compilation_cache()
        if runtime != "jax":
            self.batcher = RuntimeBatcher(model, params, runtime, batch_size, announce=report if progress else None)
            return
        try:
            self.batcher = Batcher(model, params, batch_size, devices)
        except ValueError as err:  # more devices asked for than there are
            raise ValueError(f"--devices {devices}: {err}") from None

    def network_size(self, height: int, width: int) -> tuple[int, int]:
        """The network input (H', W') of a (height, width) image."""
        return self.processing.network_size(height, width)

    def check(self, height: int, width: int) -> None:
        """ValueError when an image of this size needs a network input over `max_pixels`."""
        check_net_input(self.network_size(height, width), self.max_pixels)

    def inputs(self, image: np.ndarray, index: int = 0) -> list[tuple[Any, np.ndarray]]:
        """[(view, network input)]: the family's network inputs of the image (`Processing.inputs`)."""
        return self.processing.inputs(image, index)

    def run(
        self,
        prepared: Iterable[tuple[M, tuple[int, int], list]],
        on_error: Callable[[list[M], Exception], None] | None = None,
    ) -> Iterator[tuple[M, tuple[int, int], list]]:
        """Stream `(meta, image (H, W), self.inputs(image, index))` -> `(meta, (H, W), parts)`, batched on the
        devices; one shape's results come in input order. The host work around the device is the caller's, so that
        it can run in worker threads: `inputs` before, `finish(size_hw, parts)` (the full-size depth map) after.
        on_error: as `Batcher.run`'s, given the metas of a failed batch (each image once)."""
        keyed = (((meta, size_hw), inputs) for meta, size_hw, inputs in prepared)
        failed = (lambda keys, err: on_error([meta for meta, _ in keys], err)) if on_error else None
        for (meta, size_hw), parts in run_prepared(self.batcher, self.processing.views, keyed, failed):
            yield meta, size_hw, parts

    def finish(self, size_hw: tuple[int, int], parts: list) -> np.ndarray:
        """An image's network outputs -> (H, W) float32 in the model's units (`output.units`)."""
        return self.processing.finish(size_hw, parts)

    def depth(self, image: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 (or uint16) image -> (H, W) float32 depth, exactly `beit-depth predict`'s .npy."""
        self.check(*image.shape[:2])
        ((_, size_hw, parts),) = self.run([(None, image.shape[:2], self.inputs(image))])
        return self.finish(size_hw, parts)

    def describe(self) -> str:
        batcher = self.batcher
        n = batcher.device_count
        if isinstance(batcher, RuntimeBatcher):
            dtype = "" if batcher.dtype == "float32" else f" ({batcher.dtype})"
            where = f"batch {batcher.batch_size} in {batcher.runtime}{dtype} on the CPU"
        else:
            where = f"batch {batcher.batch_size} on {n} {batcher.mesh.devices.flat[0].platform} device{'s' * (n != 1)}"
        return where + (f", weights licence {self.licence}" if self.licence else "")
