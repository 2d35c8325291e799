"""DPT with a BEiT encoder (DPT figure 1): embed -> transformer -> reassemble x4 -> fusion x4 -> head."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from beit_flax.models.dpt.attention import ATTENTION_IMPLS, AttentionImpl
from beit_flax.models.dpt.config import DPTConfig
from beit_flax.models.dpt.encoder import encoder
from beit_flax.models.dpt.fusion import FeatureFusionBlock
from beit_flax.models.dpt.head import DepthHead
from beit_flax.models.dpt.patch_embed import PatchEmbed
from beit_flax.models.dpt.reassemble import Reassemble
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
        raise ValueError(
            f"H and W must be positive multiples of {patch_size} (the patch size); got shape {shape}"
        )


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
    """

    config: DPTConfig
    dtype: str = "float32"
    remat: bool = False
    scan: bool = False
    attention: AttentionImpl = "auto"

    def __post_init__(self) -> None:
        check_dtype(self.dtype)
        if self.attention not in ATTENTION_IMPLS:
            raise ValueError(f"attention must be one of {ATTENTION_IMPLS}, got {self.attention!r}")
        super().__post_init__()

    def __call__(self, images_bhwc: jnp.ndarray) -> jnp.ndarray:
        check_network_input(images_bhwc, self.config.patch_size)
        with matmul_precision(check_dtype(self.dtype)):
            return self._depth(images_bhwc)

    @nn.compact
    def _depth(self, images_bhwc: jnp.ndarray) -> jnp.ndarray:
        cfg, dtype = self.config, check_dtype(self.dtype)
        tokens_bnc, grid_hw = PatchEmbed(cfg.width, cfg.patch_size, dtype, name="patch_embed")(
            images_bhwc.astype(jnp.float32)
        )
        hooked = encoder(cfg, remat=self.remat, scan=self.scan, attention=self.attention, dtype=dtype)(
            tokens_bnc, grid_hw
        )
        l1, l2, l3, l4 = (
            Reassemble(cfg, stage, dtype, name=f"reassemble_{stage}")(tokens, grid_hw)
            for stage, tokens in zip((1, 2, 3, 4), hooked)
        )
        size = lambda x: x.shape[1:3]
        path = FeatureFusionBlock(cfg, 4, dtype, name="fusion_4")(l4, None, size(l3))
        path = FeatureFusionBlock(cfg, 3, dtype, name="fusion_3")(path, l3, size(l2))
        path = FeatureFusionBlock(cfg, 2, dtype, name="fusion_2")(path, l2, size(l1))
        path = FeatureFusionBlock(cfg, 1, dtype, name="fusion_1")(path, l1, (2 * l1.shape[1], 2 * l1.shape[2]))
        return DepthHead(cfg, dtype, name="head")(path)
