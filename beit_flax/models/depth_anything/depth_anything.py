"""Depth Anything (V1, V2): DINOv2 -> the DPT head (`depth_anything_v2/dpt.py`, `DepthAnythingV2` / `DPTHead`).

The head is this project's DPT stages with Depth Anything's sizes: per tap, the cls token dropped (or the readout
projection with `use_clstoken`), a 1x1 projection, resample x4 / x2 / x1 / x0.5, a bias-free 3x3 conv to
`features` (`Reassemble`); the four fusion blocks (`fuse`; bilinear, align_corners=True: refinenet4..2 to the next
map's size, refinenet1 x2); `output_conv1`, bilinear (align_corners=True) to 14 x the patch grid - the input's size -
and `output_conv2` (`DepthHead`): ReLU for relative inverse depth, sigmoid x `max_depth` meters for metric models.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from beit_flax.models.depth_anything.config import DepthAnythingConfig
from beit_flax.models.depth_anything.dinov2 import Encoder
from beit_flax.models.dpt.attention import AttentionImpl, QueryChunk
from beit_flax.models.dpt.dpt import check_execution_knobs, check_network_input
from beit_flax.models.dpt.fusion import fuse
from beit_flax.models.dpt.head import DepthHead
from beit_flax.models.dpt.patch_embed import PatchEmbed
from beit_flax.models.dpt.reassemble import STAGE_SCALES, Reassemble
from beit_flax.models.precision import check_dtype, matmul_precision

HEAD_CHANNELS = 32  # `head_features_2` of the original


class DepthAnything(nn.Module):
    """`apply({"params": params}, images)`: images (B, H, W, 3) float normalised with ImageNet's mean and std, H and
    W multiples of 14 -> (B, H, W) float32: relative inverse depth (larger = nearer, non-negative, unknown scale and
    shift), or meters in (0, max_depth) for a metric config.

    Execution knobs as `DPT`'s (dtype, remat, attention, query_chunk); scan is not implemented for DINOv2 and is
    refused.
    """

    config: DepthAnythingConfig
    dtype: str = "float32"
    remat: bool = False
    scan: bool = False
    attention: AttentionImpl = "auto"
    query_chunk: QueryChunk = "auto"

    def __post_init__(self) -> None:
        check_execution_knobs(self)
        if self.scan:
            raise ValueError("scan=True is not implemented for Depth Anything (its encoder runs unrolled)")
        super().__post_init__()

    def __call__(self, images_bhwc: jnp.ndarray) -> jnp.ndarray:
        check_network_input(images_bhwc, self.config.patch_size)
        with matmul_precision(check_dtype(self.dtype)):
            return self._forward(images_bhwc)

    @nn.compact
    def _forward(self, images_bhwc: jnp.ndarray) -> jnp.ndarray:
        cfg, dtype = self.config, check_dtype(self.dtype)
        embed = PatchEmbed(cfg.width, cfg.patch_size, dtype, pos_grid=cfg.pos_grid, name="patch_embed")
        tokens_bnc, (h, w) = embed(images_bhwc.astype(jnp.float32))
        knobs = {"remat": self.remat, "attention": self.attention, "query_chunk": self.query_chunk}
        tapped = Encoder(cfg, dtype=dtype, name="encoder", **knobs)(tokens_bnc)
        maps = tuple(
            Reassemble(channels, scale, cfg.features, cfg.use_clstoken, dtype, name=f"reassemble_{stage}")(
                tokens, (h, w)
            )
            for stage, (tokens, channels, scale) in enumerate(zip(tapped, cfg.out_channels, STAGE_SCALES), start=1)
        )
        fused = fuse(maps, cfg.features, dtype)
        output = "sigmoid" if cfg.metric else "relu"
        depth = DepthHead(cfg.features, HEAD_CHANNELS, output, dtype, name="head")(
            fused[-1], (cfg.patch_size * h, cfg.patch_size * w)
        )
        return depth * cfg.max_depth if cfg.metric else depth
