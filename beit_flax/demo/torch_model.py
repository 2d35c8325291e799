"""Synthetic DPT-BEiT checkpoints: transformers' DPTForDepthEstimation built from a config, every weight perturbed.

Real MiDaS weights cannot be downloaded everywhere (CI, air-gapped machines), yet the converter and the model must be
checked end to end. A freshly initialised DPT-BEiT outputs ~0 after its final ReLU, which makes any comparison pass,
so `build_reference` overwrites every parameter with seeded random values at scales that keep the activations O(1)
through all 24 blocks, and re-centres the last bias so the depth map is far from zero (`assert_nondegenerate`).
Used by the demo (`beit-demo`), the benchmarks and the tests. Nothing here downloads anything.

A *spec* is a `beit_flax.DPTConfig` or a plain dict with the keys in `SPEC_KEYS`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import DPTConfig, DPTForDepthEstimation

from beit_flax.models.dpt.config import DPTConfig as FlaxConfig
from beit_flax.models.dpt.convert.hf_config import hf_config_dict

PATCH = 16
"""Patch size of every released model."""

REASSEMBLE_FACTORS: tuple[float, ...] = (4, 2, 1, 0.5)
"""Spatial factor of reassemble stage k=1..4 relative to the patch grid."""

SPEC_KEYS = frozenset(
    {
        "width",
        "depth",
        "num_heads",
        "train_grid",
        "hooks",
        "reassemble_channels",
        "fusion_channels",
        "head_channels",
        "layer_norm_eps",
    }
)


def _check_spec(spec: Mapping[str, Any]) -> None:
    missing = SPEC_KEYS - set(spec)
    extra = set(spec) - SPEC_KEYS
    if missing or extra:
        raise ValueError(f"bad spec: missing {sorted(missing)}, unexpected {sorted(extra)}")
    if spec["width"] % spec["num_heads"]:
        raise ValueError("width must be divisible by num_heads")
    if len(spec["hooks"]) != 4 or len(spec["reassemble_channels"]) != 4:
        raise ValueError("hooks and reassemble_channels need 4 entries")
    if sorted(spec["hooks"]) != list(spec["hooks"]) or not 0 <= spec["hooks"][0] <= spec["hooks"][-1] < spec["depth"]:
        raise ValueError("hooks must be increasing 0-based block indices < depth")


def as_spec(spec: Mapping[str, Any] | FlaxConfig) -> dict[str, Any]:
    """The plain-dict spec of a `beit_flax.DPTConfig` (or a checked copy of a dict spec)."""
    if isinstance(spec, FlaxConfig):
        spec = {k: v for k, v in dataclasses.asdict(spec).items() if k in SPEC_KEYS}
    _check_spec(spec)
    return dict(spec)


def hf_config(spec: Mapping[str, Any] | FlaxConfig) -> DPTConfig:
    """transformers ``DPTConfig`` (BEiT backbone) reproducing the MiDaS v3.1 BEiT-DPT described by ``spec``.

    Built from ``beit_flax.convert.hf_config.hf_config_dict`` (what ``export_weights`` writes as config.json), so
    the mapping is stated once; see there for the choices. ``spec["head_channels"]`` ends up as an extra attribute
    only: transformers' ``DPTDepthEstimationHead`` hard-codes 32 channels for the head's middle conv;
    ``build_model`` patches the head when a spec asks for something else.
    """
    config = spec if isinstance(spec, FlaxConfig) else FlaxConfig(**as_spec(spec), patch_size=PATCH)
    return DPTConfig.from_dict(hf_config_dict(config))


def _fan_in(module: nn.Module, weight: Tensor) -> int:
    """Number of inputs feeding one output element of a Linear / Conv2d / ConvTranspose2d."""
    if isinstance(module, nn.ConvTranspose2d):
        # weight (in, out, kh, kw); with stride s each output pixel sees (kh/s)*(kw/s) taps per input channel
        kh, kw = module.kernel_size
        sh, sw = module.stride
        return max(1, module.in_channels * math.ceil(kh / sh) * math.ceil(kw / sw))
    return weight[0].numel()  # Linear (out, in); Conv2d (out, in, kh, kw)


@torch.no_grad()
def _perturb_(model: nn.Module, seed: int) -> None:
    """Overwrite every parameter of ``model`` with seeded random values (see ``build_reference`` for the scales)."""
    gen = torch.Generator().manual_seed(seed)

    def normal(shape: torch.Size, std: float, mean: float = 0.0) -> Tensor:
        return torch.randn(shape, generator=gen) * std + mean

    def uniform(shape: torch.Size, low: float, high: float) -> Tensor:
        return torch.rand(shape, generator=gen) * (high - low) + low

    touched: set[int] = set()
    for mod_name, module in model.named_modules():
        for p_name, param in module.named_parameters(recurse=False):
            if isinstance(module, nn.LayerNorm):
                value = normal(param.shape, 0.1, 1.0) if p_name == "weight" else normal(param.shape, 0.1)
            elif isinstance(module, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
                if p_name == "weight":
                    value = normal(param.shape, 1.0 / math.sqrt(_fan_in(module, param)))
                else:
                    value = normal(param.shape, 0.1)
            elif p_name in ("lambda_1", "lambda_2"):
                value = uniform(param.shape, 0.1, 0.5)
            elif p_name == "relative_position_bias_table" or p_name == "cls_token":
                value = normal(param.shape, 0.5)
            else:
                raise RuntimeError(f"no perturbation rule for {mod_name}.{p_name}")
            param.copy_(value)
            touched.add(id(param))
    untouched = [n for n, p in model.named_parameters() if id(p) not in touched]
    if untouched:
        raise RuntimeError(f"parameters left unperturbed: {untouched}")


def build_model(spec: Mapping[str, Any] | FlaxConfig) -> DPTForDepthEstimation:
    """The bare transformers model for ``spec`` (transformers' own init, eager attention), head patched for
    ``head_channels`` (see ``build_reference``). Works under ``with torch.device("meta"):`` for cheap key checks."""
    spec = as_spec(spec)
    model = DPTForDepthEstimation._from_config(hf_config(spec), attn_implementation="eager")
    head_channels = spec["head_channels"]
    head = model.head.head
    if head[2].out_channels != head_channels:  # transformers hard-codes 32 here
        head[2] = nn.Conv2d(head[2].in_channels, head_channels, kernel_size=3, stride=1, padding=1)
        head[4] = nn.Conv2d(head_channels, 1, kernel_size=1, stride=1, padding=0)
    return model


def build_reference(spec: Mapping[str, Any] | FlaxConfig, seed: int = 0) -> DPTForDepthEstimation:
    """transformers ``DPTForDepthEstimation`` for ``spec``: eval mode, fp32, eager attention, all weights perturbed.

    A freshly initialised DPT-BEiT outputs ~0 after its final ReLU (zero tables, zero cls token, constant layer
    scales...), so comparisons against it prove nothing. Every parameter is overwritten from
    ``torch.Generator().manual_seed(seed)`` (independent of the global RNG):

    * Linear / Conv2d / ConvTranspose2d weights: N(0, 1/fan_in) (transposed conv fan_in = in_channels * taps per
      output pixel, i.e. in_channels for kernel == stride); all biases N(0, 0.1^2)
    * LayerNorm weight 1 + N(0, 0.1^2), bias N(0, 0.1^2)
    * layer scales lambda_1 / lambda_2 ~ U(0.1, 0.5); relative position bias tables N(0, 0.5^2); cls token N(0, 0.5^2)

    Finally the bias of the last 1x1 conv is re-centred on fixed calibration images (``_center_final_bias_``),
    aiming at ~65 % positive output pixels (observed: 20-90 % depending on seed, model and image size; seed 0 of
    ``TINY`` and of the presets is checked).

    ``spec["head_channels"] != 32``: transformers hard-codes 32 output channels for ``head.head[2]``; the two convs
    around it are replaced by ``Conv2d(F/2, hc, 3, padding=1)`` and ``Conv2d(hc, 1, 1)`` (same state-dict names).
    """
    model = build_model(spec).float().eval()
    _perturb_(model, seed)
    _center_final_bias_(model, seed)
    return model


CALIBRATION_SIZES: tuple[tuple[int, int], ...] = ((64, 64), (80, 48), (48, 112))
"""Image sizes used to centre the final bias (small: the fusion stages dominate the cost of a forward)."""

CALIBRATION_QUANTILE = 0.35
"""Target fraction of non-positive pre-ReLU outputs on each calibration image (the median over the sizes)."""


@torch.no_grad()
def _center_final_bias_(model: DPTForDepthEstimation, seed: int) -> None:
    """Set the last conv's bias so ~65 % of its pre-ReLU outputs are positive on fixed calibration images.

    With random weights the pre-ReLU output carries a random constant offset (sum_c w_c * mean(relu(h_c))) that
    can be several times its spatial spread; left alone, some seeds give maps that are >95 % zeros. The offset also
    drifts with the image size, so the bias is -(median over ``CALIBRATION_SIZES`` of the per-image
    ``CALIBRATION_QUANTILE`` quantile of the pre-ReLU output without bias).
    """
    last = model.head.head[4]
    captured: list[Tensor] = []
    handle = last.register_forward_hook(lambda _m, _i, out: captured.append(out - last.bias.view(1, -1, 1, 1)))
    try:
        for j, size in enumerate(CALIBRATION_SIZES):
            model(pixel_values=random_images(1, *size, seed=seed * 7919 + j))
    finally:
        handle.remove()
    quantiles = torch.stack([pre.flatten().quantile(CALIBRATION_QUANTILE) for pre in captured])
    last.bias.copy_((-quantiles.median()).reshape(1))


@torch.no_grad()
def reference_depth(model: DPTForDepthEstimation, images_nchw: Tensor) -> Tensor:
    """transformers forward: images (B, 3, H, W) float32 -> ``predicted_depth`` (B, H', W').

    (H', W') = (H, W) when both are multiples of 32; otherwise transformers' fusion rounds the size up (see module doc).
    """
    return model(pixel_values=images_nchw).predicted_depth


def random_images(batch: int, height: int, width: int, seed: int = 0) -> Tensor:
    """Normalized-looking test images (B, 3, H, W) in [-1, 1]: a smooth random pattern plus some noise."""
    gen = torch.Generator().manual_seed(seed)
    low = torch.rand((batch, 3, max(2, height // 16), max(2, width // 16)), generator=gen) * 2 - 1
    smooth = F.interpolate(low, size=(height, width), mode="bilinear", align_corners=False)
    noise = torch.rand((batch, 3, height, width), generator=gen) * 2 - 1
    return (0.7 * smooth + 0.3 * noise).clamp(-1, 1)


def assert_nondegenerate(
    depth: np.ndarray | Tensor, *, min_max: float = 1e-2, min_positive: float = 0.2, min_std_ratio: float = 0.05
) -> None:
    """Assert a depth map (any shape, e.g. (B, H, W)) is usable for a numerical comparison.

    Finite; max > ``min_max``; more than ``min_positive`` of the pixels strictly positive (after the final ReLU);
    std > ``min_std_ratio`` * max (not a near-constant map).
    """
    d = depth.detach().cpu().numpy() if isinstance(depth, Tensor) else np.asarray(depth)
    d = d.astype(np.float64)
    assert d.size > 0, "empty depth map"
    assert np.isfinite(d).all(), "depth has non-finite values"
    dmax, std, pos = float(d.max()), float(d.std()), float((d > 0).mean())
    assert dmax > min_max, f"depth max {dmax:.3g} <= {min_max}"
    assert pos > min_positive, f"only {pos:.1%} of the pixels are positive"
    assert std > min_std_ratio * dmax, f"depth std {std:.3g} is tiny relative to its max {dmax:.3g}"
