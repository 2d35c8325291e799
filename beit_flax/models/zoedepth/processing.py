"""ZoeDepth's host pipeline as the family's `Processing`: each image becomes one or two network inputs
(`transforms.preprocess_views`: plain and flipped, reflect-padded), each with its `ViewMeta`; `finish` merges an
image's views into its metric depth (`transforms.merge`). `beit_flax.predict`, `Predictor` (`beit-depth predict /
video`, the app) run it through the shared pipeline.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from beit_flax.models.zoedepth.config import ZoeDepthConfig
from beit_flax.models.zoedepth.transforms import ViewMeta, merge, pad_sizes, preprocess_views, target_size


def check_net_hw(net_size: int | Sequence[int]) -> tuple[int, int]:
    """A ZoeDepth net size: an int N (N x N, as the original's `img_size=N`) or (H, W), each at least 32."""
    sides = (net_size, net_size) if isinstance(net_size, (int, np.integer)) else tuple(net_size)
    if len(sides) != 2 or any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 32 for s in sides):
        raise ValueError(f"net size must be an int or (H, W) of ints >= 32, got {net_size!r}")
    return int(sides[0]), int(sides[1])


def depth_range_m(config: ZoeDepthConfig) -> float:
    """The top of the fixed colour range of a ZoeDepth's maps, meters: the largest `max_depth` of its bin heads
    (N: 10, K: 10 as the original builds it, NK: 80). Its "softplus" bins can go beyond: those pixels show as far."""
    return max(b.max_depth for b in config.bins)


@dataclasses.dataclass(frozen=True)
class ZoeDepthProcessing:
    """`infer_pil`'s steps for one net size (`family.Processing`): pad, flip and aspect as asked."""

    net: tuple[int, int]
    pad: bool = True
    flip: bool = True
    keep_aspect: bool = True

    @property
    def views(self) -> int:
        return 2 if self.flip else 1

    def network_size(self, height: int, width: int) -> tuple[int, int]:
        """The network input of a (height, width) image: of the padded image."""
        pad_h, pad_w = pad_sizes(height, width, self.pad)
        return target_size(height + 2 * pad_h, width + 2 * pad_w, self.net, keep_aspect=self.keep_aspect)

    def inputs(self, image: np.ndarray, index: int = 0) -> list[tuple[ViewMeta, np.ndarray]]:
        return preprocess_views(
            image, self.net, index=index, pad=self.pad, flip=self.flip, keep_aspect=self.keep_aspect
        )

    def finish(self, size_hw: tuple[int, int], parts: list[tuple[ViewMeta, np.ndarray]]) -> np.ndarray:
        return merge(parts)


def processing(
    config: ZoeDepthConfig,
    size: int | Sequence[int] | None = None,
    square: bool = False,
    pad: bool | None = None,
    flip: bool | None = None,
) -> ZoeDepthProcessing:
    """The family's `processing`: `size` an int (N x N) or (H, W), default the config's (384 x 512; K: 384 x 768);
    `square` resizes without keeping the aspect ratio; pad and flip default to True, as the original's."""
    net = check_net_hw(config.net_size if size is None else size)
    return ZoeDepthProcessing(net, pad is not False, flip is not False, not square)
