"""Reassemble (DPT figure 1, "Reassemble_s": Read, Concatenate, Resample), one per hooked block; shared by the DPT
families (MiDaS BEiT, Depth Anything), which differ only in the readout and the sizes.

Read with the "project" readout: every patch token t becomes GELU(Linear(concat[t, cls])) and the cls token is dropped
(without it, the cls token is only dropped).
Concatenate: the tokens are laid back on the (h, w) patch grid. Resample: a 1x1 conv to D_k channels, then
x4 / x2 transposed convs (k = 1, 2), nothing (k = 3) or a 3x3 stride-2 conv with padding 1 on every side (k = 4; output
ceil(h/2) like torch, which is not 'SAME' padding). Last, MiDaS's `scratch.layer{k}_rn`: a bias-free 3x3 conv to the
fusion width.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from beit_flax.models.precision import Dense

# Upsampling factor of each stage relative to the patch grid (DPT: 1/4, 1/8, 1/16, 1/32 of the image at patch 16).
STAGE_SCALES = (4, 2, 1, 0.5)


class Reassemble(nn.Module):
    """(B, 1 + h*w, C) tokens of one hooked block -> (B, h', w', fusion_channels) feature map, h' = scale * h.

    channels: D_s, the reassembled map's channels; scale: one of `STAGE_SCALES` (MiDaS's `act_postprocess{s}` for
    stage s = 1..4, Depth Anything's `projects[s-1]` / `resize_layers[s-1]`); fusion_channels: the output's
    (`scratch.layer{s}_rn`). readout: the "project" readout (MiDaS); False drops the cls token instead (Depth
    Anything's `use_clstoken=False`, every released model).
    """

    channels: int
    scale: float
    fusion_channels: int
    readout: bool = True
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, tokens_bnc: jnp.ndarray, grid_hw: tuple[int, int]) -> jnp.ndarray:
        dtype, channels, scale = self.dtype, self.channels, self.scale
        b, _, c = tokens_bnc.shape

        cls_b1c, patches_bnc = tokens_bnc[:, :1], tokens_bnc[:, 1:]
        if self.readout:
            readout_input = jnp.concatenate([patches_bnc, jnp.broadcast_to(cls_b1c, patches_bnc.shape)], axis=-1)
            patches_bnc = nn.gelu(Dense(c, dtype=dtype, name="readout")(readout_input), approximate=False)
        features_bhwc = patches_bnc.reshape(b, *grid_hw, c)

        features_bhwc = nn.Conv(channels, (1, 1), dtype=dtype, name="project")(features_bhwc)
        if scale > 1:
            features_bhwc = nn.ConvTranspose(
                channels,
                (scale, scale),
                strides=(scale, scale),
                padding="VALID",
                transpose_kernel=True,
                dtype=dtype,
                name="resample",
            )(features_bhwc)
        elif scale < 1:
            features_bhwc = nn.Conv(
                channels, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)), dtype=dtype, name="resample"
            )(features_bhwc)
        return nn.Conv(
            self.fusion_channels, (3, 3), padding=((1, 1), (1, 1)), use_bias=False, dtype=dtype, name="to_fusion"
        )(features_bhwc)
