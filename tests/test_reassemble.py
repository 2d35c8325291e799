"""`Reassemble` (models/dpt/reassemble.py) vs MiDaS's `act_postprocess{k}` + `scratch.layer{k}_rn` as torch modules.

Params are made from the torch tensors with the converter's layout transforms (`flax_helpers.py`): Conv2d and
ConvTranspose2d weights -> `w.transpose(2, 3, 1, 0)`, Linear -> `w.T`. The resample layers are checked in isolation
(their input and output captured from the Flax module) and then each whole stage, on non-square grids.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flax_helpers import (
    assert_close,
    assert_params_match_module,
    nchw_to_nhwc,
    nhwc_to_nchw,
    to_numpy,
    torch_conv_to_flax,
    torch_linear_to_flax,
)
from tiny_config import TINY as CFG
from torch import nn

from beit_flax.models.dpt.config import DPTConfig
from beit_flax.models.dpt.reassemble import STAGE_SCALES, Reassemble


class TorchReassemble(nn.Module):
    """MiDaS v3.1 reassemble stage k with the "project" readout, written with plain torch layers."""

    def __init__(self, cfg: DPTConfig, stage: int):
        super().__init__()
        c, d = cfg.width, cfg.reassemble_channels[stage - 1]
        self.readout = nn.Linear(2 * c, c)
        self.project = nn.Conv2d(c, d, 1)
        self.resample = {
            1: nn.ConvTranspose2d(d, d, 4, stride=4),
            2: nn.ConvTranspose2d(d, d, 2, stride=2),
            3: nn.Identity(),
            4: nn.Conv2d(d, d, 3, stride=2, padding=1),
        }[stage]
        self.to_fusion = nn.Conv2d(d, cfg.fusion_channels, 3, padding=1, bias=False)

    def forward(self, tokens: torch.Tensor, grid_hw: tuple[int, int]) -> torch.Tensor:
        cls, patches = tokens[:, :1], tokens[:, 1:]
        x = F.gelu(self.readout(torch.cat([patches, cls.expand_as(patches)], dim=-1)))  # exact (erf) GELU
        x = x.transpose(1, 2).unflatten(2, grid_hw)  # (B, C, h, w), row-major patches
        return self.to_fusion(self.resample(self.project(x)))

    def flax_params(self) -> dict:
        params = {
            "readout": {"kernel": torch_linear_to_flax(self.readout.weight), "bias": to_numpy(self.readout.bias)},
            "project": {"kernel": torch_conv_to_flax(self.project.weight), "bias": to_numpy(self.project.bias)},
            "to_fusion": {"kernel": torch_conv_to_flax(self.to_fusion.weight)},
        }
        if not isinstance(self.resample, nn.Identity):
            params["resample"] = {
                "kernel": torch_conv_to_flax(self.resample.weight),
                "bias": to_numpy(self.resample.bias),
            }
        return params


def reassemble(stage: int) -> Reassemble:
    """MiDaS's stage `stage` (1..4) of the test config."""
    return Reassemble(CFG.reassemble_channels[stage - 1], STAGE_SCALES[stage - 1], CFG.fusion_channels)


def _run(stage: int, grid_hw: tuple[int, int], seed: int = 0):
    """(torch module, tokens, flax output, flax intermediates) for one stage."""
    torch.manual_seed(seed)
    ref = TorchReassemble(CFG, stage)
    tokens = torch.randn(2, 1 + grid_hw[0] * grid_hw[1], CFG.width)
    module = reassemble(stage)
    params = ref.flax_params()
    assert_params_match_module(module, params, to_numpy(tokens), grid_hw)
    apply = jax.jit(
        lambda p, t: module.apply({"params": p}, t, grid_hw, capture_intermediates=True, mutable=["intermediates"])
    )
    out, state = apply(params, to_numpy(tokens))
    return ref, tokens, out, state["intermediates"]


@pytest.mark.parametrize(
    "stage,grid_hw",
    [(1, (3, 5)), (2, (3, 5)), (4, (3, 5)), (4, (4, 6)), (4, (5, 2)), (4, (1, 1))],
)
def test_resample_layer_matches_torch(stage, grid_hw):
    ref, _, _, inter = _run(stage, grid_hw)
    resample_in = inter["project"]["__call__"][0]
    resample_out = inter["resample"]["__call__"][0]
    with torch.no_grad():
        expected = ref.resample(nhwc_to_nchw(resample_in))
    factor = {1: 4, 2: 2}.get(stage)
    h, w = grid_hw
    expected_hw = (h * factor, w * factor) if factor else (-(-h // 2), -(-w // 2))  # stage 4: ceil(h/2)
    assert resample_out.shape == (2, *expected_hw, CFG.reassemble_channels[stage - 1])
    assert_close(resample_out, nchw_to_nhwc(expected), f"reassemble_{stage}/resample on {grid_hw}")


@pytest.mark.parametrize("stage", [1, 2, 3, 4])
@pytest.mark.parametrize("grid_hw", [(3, 5), (4, 2)])
def test_reassemble_stage_matches_torch(stage, grid_hw):
    ref, tokens, out, _ = _run(stage, grid_hw, seed=stage)
    with torch.no_grad():
        expected = ref(tokens, grid_hw)
    assert out.shape == nchw_to_nhwc(expected).shape
    assert_close(out, nchw_to_nhwc(expected), f"Reassemble stage {stage} on {grid_hw}")


def test_cls_token_reaches_every_position():
    """The readout concatenates cls to every token: changing only cls must change every output pixel."""
    ref, tokens, out, _ = _run(3, (3, 5))
    tokens2 = tokens.clone()
    tokens2[:, 0] += 1.0
    apply = jax.jit(lambda p, t: reassemble(3).apply({"params": p}, t, (3, 5)))
    out2 = apply(ref.flax_params(), to_numpy(tokens2))
    assert (np.abs(np.asarray(out2) - np.asarray(out)).max(axis=-1) > 0).all()
