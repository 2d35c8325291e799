"""DPT with a BEiT encoder (DPT figure 1): embed -> transformer -> reassemble x4 -> fusion x4 -> head."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from beit_flax.config import DPTConfig
from beit_flax.encoder import Encoder
from beit_flax.fusion import FeatureFusionBlock
from beit_flax.head import DepthHead
from beit_flax.patch_embed import PatchEmbed
from beit_flax.reassemble import Reassemble


def check_images(images: jnp.ndarray, patch_size: int) -> None:
    """Validate the model input before tracing; raises ValueError naming the shape received and the rule."""
    shape = tuple(getattr(images, "shape", ()))
    dtype = getattr(images, "dtype", None)
    if len(shape) != 4 or shape[-1] != 3:
        raise ValueError(f"images must be (B, H, W, 3) NHWC; got shape {shape}")
    if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"images must be a float array normalised as (x - 0.5) / 0.5; got dtype {dtype} (shape {shape})")
    b, h, w, _ = shape
    if b < 1 or h < patch_size or w < patch_size or h % patch_size or w % patch_size:
        raise ValueError(
            f"H and W must be positive multiples of {patch_size} (the patch size); got shape {shape}"
        )


class DPT(nn.Module):
    """MiDaS v3.1 BEiT-DPT.

    `apply({"params": params}, images)` with images (B, H, W, 3) float, normalised as (x - 0.5) / 0.5, H and W any
    multiples of 16, returns (B, H, W) float32 relative inverse depth.

    remat: gradient checkpointing per encoder block (training only; the forward pass and parameters are unchanged).
    """

    config: DPTConfig
    remat: bool = False

    @nn.compact
    def __call__(self, images_bhwc: jnp.ndarray) -> jnp.ndarray:
        cfg = self.config
        check_images(images_bhwc, cfg.patch_size)
        tokens_bnc, grid_hw = PatchEmbed(cfg.width, cfg.patch_size, cfg.compute_dtype, name="patch_embed")(
            images_bhwc.astype(jnp.float32)
        )
        hooked = Encoder(cfg, remat=self.remat, name="encoder")(tokens_bnc, grid_hw)
        l1, l2, l3, l4 = (
            Reassemble(cfg, stage, name=f"reassemble_{stage}")(tokens, grid_hw)
            for stage, tokens in zip((1, 2, 3, 4), hooked)
        )
        size = lambda x: x.shape[1:3]
        path = FeatureFusionBlock(cfg, 4, name="fusion_4")(l4, None, size(l3))
        path = FeatureFusionBlock(cfg, 3, name="fusion_3")(path, l3, size(l2))
        path = FeatureFusionBlock(cfg, 2, name="fusion_2")(path, l2, size(l1))
        path = FeatureFusionBlock(cfg, 1, name="fusion_1")(path, l1, (2 * l1.shape[1], 2 * l1.shape[2]))
        return DepthHead(cfg, name="head")(path)
