"""DPT with a BEiT encoder (DPT figure 1): embed -> transformer -> reassemble x4 -> fusion x4 -> head."""

from __future__ import annotations

import contextlib

import flax.linen as nn
import jax
import jax.numpy as jnp

from beit_flax.config import DPTConfig
from beit_flax.encoder import ATTENTION_IMPLS, AttentionImpl, encoder
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
        raise ValueError(
            f"images must be a float array normalised as (x - 0.5) / 0.5; got dtype {dtype} (shape {shape})"
        )
    b, h, w, _ = shape
    if b < 1 or h < patch_size or w < patch_size or h % patch_size or w % patch_size:
        raise ValueError(
            f"H and W must be positive multiples of {patch_size} (the patch size); got shape {shape}"
        )


def matmul_precision(dtype: jnp.dtype) -> contextlib.AbstractContextManager:
    """The matmul precision the model is traced under: full float32 ("highest") for float32 compute, so GPUs and
    TPUs match the original to 1e-5 instead of rounding matmul inputs to TF32 / bf16 passes; the backend's default
    for 16-bit compute. Setting jax's own `jax_default_matmul_precision` (e.g. to "tensorfloat32", or the env var
    JAX_DEFAULT_MATMUL_PRECISION) overrides this. No effect on CPU, which computes float32 matmuls in float32."""
    if dtype != jnp.float32 or jax.config.jax_default_matmul_precision is not None:
        return contextlib.nullcontext()
    return jax.default_matmul_precision("highest")


class DPT(nn.Module):
    """MiDaS v3.1 BEiT-DPT.

    `apply({"params": params}, images)` with images (B, H, W, 3) float, normalised as (x - 0.5) / 0.5, H and W any
    multiples of 16, returns (B, H, W) float32 relative inverse depth.

    Precision (`config.dtype`): parameters stay float32 and are cast per op; the residual stream, LayerNorm
    statistics, attention softmax and the head's last conv run in float32, the output is float32; see
    `matmul_precision` for float32 matmuls on accelerators.

    Execution switches (same parameters, same values):
      remat: gradient checkpointing per encoder block (for training).
      scan: the encoder as `nn.scan` loops (compiles faster; see `encoder.encoder`).
      attention: "auto" (cuDNN for 16-bit compute on NVIDIA GPUs, else XLA), "xla" or "cudnn"; see `encoder.attend`.
    """

    config: DPTConfig
    remat: bool = False
    scan: bool = False
    attention: AttentionImpl = "auto"

    def __post_init__(self) -> None:
        if self.attention not in ATTENTION_IMPLS:
            raise ValueError(f"attention must be one of {ATTENTION_IMPLS}, got {self.attention!r}")
        super().__post_init__()

    def __call__(self, images_bhwc: jnp.ndarray) -> jnp.ndarray:
        check_images(images_bhwc, self.config.patch_size)
        with matmul_precision(self.config.compute_dtype):
            return self._depth(images_bhwc)

    @nn.compact
    def _depth(self, images_bhwc: jnp.ndarray) -> jnp.ndarray:
        cfg = self.config
        tokens_bnc, grid_hw = PatchEmbed(cfg.width, cfg.patch_size, cfg.compute_dtype, name="patch_embed")(
            images_bhwc.astype(jnp.float32)
        )
        hooked = encoder(cfg, remat=self.remat, scan=self.scan, attention=self.attention)(tokens_bnc, grid_hw)
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
