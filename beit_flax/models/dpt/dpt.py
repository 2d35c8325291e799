"""DPT with a BEiT encoder (DPT figure 1): embed -> transformer -> reassemble x4 -> fusion x4 -> head."""

from __future__ import annotations

from typing import NamedTuple

import flax.linen as nn
import jax.numpy as jnp

from beit_flax.models.dpt.attention import ATTENTION_IMPLS, AttentionImpl, QueryChunk, query_chunk
from beit_flax.models.dpt.config import DPTConfig
from beit_flax.models.dpt.encoder import encoder
from beit_flax.models.dpt.fusion import fuse
from beit_flax.models.dpt.head import DepthHead
from beit_flax.models.dpt.patch_embed import PatchEmbed
from beit_flax.models.dpt.reassemble import STAGE_SCALES, Reassemble
from beit_flax.models.precision import check_dtype, matmul_precision


def check_network_input(images: jnp.ndarray, patch_size: int) -> None:
    """Validate a network input batch before tracing; raises ValueError naming the shape received and the rule."""
    shape = tuple(getattr(images, "shape", ()))
    dtype = getattr(images, "dtype", None)
    if len(shape) != 4 or shape[-1] != 3:
        raise ValueError(f"images must be (B, H, W, 3) NHWC; got shape {shape}")
    if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(
            f"images must be a float array normalised as (x - 0.5) / 0.5; got dtype {dtype} (shape {shape})"
        )
    b, h, w, _ = shape
    if b < 1 or h < patch_size or w < patch_size or h % patch_size or w % patch_size:
        raise ValueError(f"H and W must be positive multiples of {patch_size} (the patch size); got shape {shape}")


def check_execution_knobs(module: nn.Module) -> None:
    """Validate a model's execution knobs (`dtype`, `attention`, `query_chunk`) when it is built; ValueError."""
    check_dtype(module.dtype)
    if module.attention not in ATTENTION_IMPLS:
        raise ValueError(f"attention must be one of {ATTENTION_IMPLS}, got {module.attention!r}")
    query_chunk(module.query_chunk, 2, 1)  # raises ValueError for anything but "auto", None or a positive int


class DPTFeatures(NamedTuple):
    """What `DPT.features` returns: the depth and the decoder maps that ZoeDepth taps (ZoeDepth `MidasCore`
    layer names in brackets). (h, w) = (H/16, W/16); maps are in the compute dtype, F = fusion_channels.

      depth: (B, H, W) float32 relative inverse depth (what `DPT.__call__` returns).
      head_activation: (B, H, W, head_channels), the head's ReLU before its last conv ("out_conv").
      layer4_rn: (B, h/2, w/2, F), stage 4's map entering the fusion stage ("l4_rn", MiDaS `scratch.layer4_rn`).
      fusion: the four fusion outputs, coarsest first ("r4", "r3", "r2", "r1"): (B, h, w, F), (B, 2h, 2w, F),
        (B, 4h, 4w, F), (B, 8h, 8w, F).
    """

    depth: jnp.ndarray
    head_activation: jnp.ndarray
    layer4_rn: jnp.ndarray
    fusion: tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray, jnp.ndarray]


class DPT(nn.Module):
    """MiDaS v3.1 BEiT-DPT.

    `apply({"params": params}, images)` with images (B, H, W, 3) float, normalised as (x - 0.5) / 0.5, H and W any
    multiples of 16, returns (B, H, W) float32 relative inverse depth.

    `config` is the architecture (what the weights file stores); the rest are execution knobs (same parameters,
    same values up to the precision asked for):
      dtype: compute dtype, one of `precision.COMPUTE_DTYPES`. Parameters stay float32 and are cast per op; the
        residual stream, LayerNorm statistics, attention softmax and the head's last conv run in float32 and the
        output is float32; float32 matmuls trace at "highest" precision (`precision.matmul_precision`).
      remat: gradient checkpointing per encoder block (for training).
      scan: the encoder as `nn.scan` loops (compiles faster; see `encoder.encoder`).
      attention: "auto" (cuDNN for 16-bit compute on NVIDIA GPUs, else XLA), "xla" or "cudnn"; see `attention.attend`.
      query_chunk: the XLA attention's queries per chunk: "auto" (chunks above `attention.CHUNK_ABOVE_TOKENS` tokens,
        so memory grows with the token count instead of its square, and on a CPU wherever the batch's logits pass
        `attention.CHUNK_BYTES`), None (never) or an int; see `attention.query_chunk`.
    """

    config: DPTConfig
    dtype: str = "float32"
    remat: bool = False
    scan: bool = False
    attention: AttentionImpl = "auto"
    query_chunk: QueryChunk = "auto"

    def __post_init__(self) -> None:
        check_execution_knobs(self)
        super().__post_init__()

    def __call__(self, images_bhwc: jnp.ndarray) -> jnp.ndarray:
        return self.features(images_bhwc).depth

    def features(self, images_bhwc: jnp.ndarray) -> DPTFeatures:
        """The depth and the decoder maps behind it (`DPTFeatures`); same input, parameters and cost as `__call__`."""
        check_network_input(images_bhwc, self.config.patch_size)
        with matmul_precision(check_dtype(self.dtype)):
            return self._forward(images_bhwc)

    @nn.compact
    def _forward(self, images_bhwc: jnp.ndarray) -> DPTFeatures:
        cfg, dtype = self.config, check_dtype(self.dtype)
        tokens_bnc, grid_hw = PatchEmbed(cfg.width, cfg.patch_size, dtype, name="patch_embed")(
            images_bhwc.astype(jnp.float32)
        )
        knobs = {"remat": self.remat, "scan": self.scan, "attention": self.attention, "query_chunk": self.query_chunk}
        hooked = encoder(cfg, dtype=dtype, **knobs)(tokens_bnc, grid_hw)
        maps = tuple(
            Reassemble(channels, scale, cfg.fusion_channels, dtype=dtype, name=f"reassemble_{stage}")(tokens, grid_hw)
            for stage, (tokens, channels, scale) in enumerate(
                zip(hooked, cfg.reassemble_channels, STAGE_SCALES), start=1
            )
        )
        fused = fuse(maps, cfg.fusion_channels, dtype)
        head = DepthHead(cfg.fusion_channels, cfg.head_channels, dtype=dtype, name="head")
        depth, activation = head(fused[-1], with_activation=True)
        return DPTFeatures(depth, activation, maps[3], fused)
