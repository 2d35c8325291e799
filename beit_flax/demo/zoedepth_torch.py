"""Synthetic ZoeDepth checkpoints: transformers' ZoeDepthForDepthEstimation built from a `ZoeDepthConfig`, every
weight perturbed, as the independent reference of the Flax ZoeDepth (tests, demos). Nothing here downloads anything.

The perturbation is the DPT reference's (`torch_model._perturb_`: weights N(0, 1/fan_in), biases N(0, 0.1^2),
LayerNorms 1 + N(0, 0.1^2), layer scales U(0.1, 0.5), tables and cls token N(0, 0.5^2)), which reaches the metric
head's convs, attractors, log-binomial and router alike; then two biases are set on calibration images so that the
outputs stay informative: the relative head's last one (most pixels positive, as for DPT) and, for two heads, the
router's last one (the calibration images split between the domains, so both heads get exercised).
"""

from __future__ import annotations

import torch
from torch import Tensor
from transformers import ZoeDepthConfig as HFZoeDepthConfig
from transformers import ZoeDepthForDepthEstimation
from transformers.models.zoedepth.modeling_zoedepth import (
    ZoeDepthConditionalLogBinomialSoftmax,
    ZoeDepthSeedBinRegressor,
)

from beit_flax.demo.torch_model import CALIBRATION_QUANTILE, _perturb_, random_images
from beit_flax.models.dpt.config import DPTConfig
from beit_flax.models.zoedepth.config import TINY, BinConfig, RouterConfig, ZoeDepthConfig
from beit_flax.models.zoedepth.convert.hf_config import zoedepth_hf_config_dict

CALIBRATION_SIZES: tuple[tuple[int, int], ...] = ((64, 64), (64, 96), (96, 64), (96, 128))
"""Image sizes of the calibration images (multiples of 32, as ZoeDepth needs)."""


def tiny_configs(core: DPTConfig) -> dict[str, ZoeDepthConfig]:
    """Small ZoeDepth variants on a small `core`, for fast tests: "n" (one softplus head, 16 bins, attractors
    4, 3, 2, 1), "k" (the same, normed) and "nk" (two softplus heads, the router with a 64-wide FFN). Widths that
    transformers hard-codes stay as it has them (`zoedepth_hf_config.hf_unsupported`)."""
    e = TINY.bin_embedding_dim
    n = TINY.replace(core=core, log_binomial_mlp_dim=(core.head_channels + 1 + e) // 2)
    return {
        "n": n,
        "k": n.replace(bins=(BinConfig("kitti", 16),), bin_centers_type="normed", net_size=(384, 768)),
        "nk": n.replace(
            bins=(BinConfig("nyu", 16), BinConfig("kitti", 16, max_depth=80.0)),
            n_attractors=(16,) * 4,
            seed_mlp_dim=e // 2,
            projector_mlp_dim=e // 2,
            log_binomial_mlp_dim=(core.head_channels + e) // 4,
            condition_on_relative_depth=False,
            router=RouterConfig(mlp_dim=64),
        ),
    }


def hf_config(config: ZoeDepthConfig) -> HFZoeDepthConfig:
    """transformers `ZoeDepthConfig` (BEiT backbone with this project's layer_norm_eps) for `config`."""
    return HFZoeDepthConfig.from_dict(zoedepth_hf_config_dict(config))


def build_model(config: ZoeDepthConfig) -> ZoeDepthForDepthEstimation:
    """The bare transformers model (its own init, eager attention). Works under `with torch.device("meta"):`."""
    return ZoeDepthForDepthEstimation._from_config(hf_config(config), attn_implementation="eager")


def build_reference(config: ZoeDepthConfig, seed: int = 0) -> ZoeDepthForDepthEstimation:
    """transformers ZoeDepth for `config`: eval mode, fp32, every parameter perturbed from `seed`, two biases
    calibrated (see the module doc)."""
    model = build_model(config).float().eval()
    _perturb_(model, seed)
    _calibrate_(model, seed)
    return model


@torch.no_grad()
def reference_outputs(model: ZoeDepthForDepthEstimation, images_nchw: Tensor) -> tuple[Tensor, Tensor | None]:
    """transformers forward on (B, 3, H, W) float32 -> (predicted_depth (B, H, W) meters, domain_logits (B, 2) or
    None). With two heads transformers routes the whole batch by the summed logits: pass one image for the
    per-image rule."""
    out = model(pixel_values=images_nchw)
    return out.predicted_depth, out.domain_logits


def calibration_images(seed: int) -> list[Tensor]:
    return [random_images(1, *size, seed=seed * 7919 + j) for j, size in enumerate(CALIBRATION_SIZES)]


SEED_BIAS_RAMP = (-2.0, 2.0)
"""Added across the bins to the softplus seed regressors' last bias (a linear ramp): centers from ~0.1 to ~2 m
instead of all ~0.7 (normed bins are spread by construction)."""
TEMPERATURE_BIAS = (0.0, 0.0, -3.0, 2.0)
"""Added to the log-binomial MLP's last bias: temperatures near 1 instead of ~25 (peaked bin probabilities)."""
P_WEIGHT_GAIN = 8.0
"""The log-binomial MLP's last weights for p are scaled by this: p then spans most of (0, 1) across pixels."""


@torch.no_grad()
def _calibrate_(model: ZoeDepthForDepthEstimation, seed: int) -> None:
    """Seed bins and log-binomial: fixed shifts (`SEED_BIAS_RAMP`, `TEMPERATURE_BIAS`), without which every pixel
    averages near-uniform probabilities over near-equal centers (a near-constant map). Relative head: last bias at
    -(median of the per-image 35 % quantiles of its pre-ReLU output), as `torch_model._center_final_bias_` does for
    DPT. Router: last bias shifted so that the median logit gap between the two domains over the calibration images
    is 0."""
    for module in model.metric_head.modules():
        if isinstance(module, ZoeDepthSeedBinRegressor) and module.bin_centers_type == "softplus":
            module.conv2.bias += torch.linspace(*SEED_BIAS_RAMP, module.conv2.out_channels)
        elif isinstance(module, ZoeDepthConditionalLogBinomialSoftmax):
            module.mlp[2].bias += torch.tensor(TEMPERATURE_BIAS)
            module.mlp[2].weight[:2] *= P_WEIGHT_GAIN
    last = model.relative_head.conv3
    classifier = getattr(model.metric_head, "mlp_classifier", None)
    captured: list[Tensor] = []
    logits: list[Tensor] = []
    handle = last.register_forward_hook(lambda _m, _i, out: captured.append(out - last.bias.view(1, -1, 1, 1)))
    try:
        for images in calibration_images(seed):
            logits.append(reference_outputs(model, images)[1])
    finally:
        handle.remove()
    quantiles = torch.stack([pre.flatten().quantile(CALIBRATION_QUANTILE) for pre in captured])
    last.bias.copy_((-quantiles.median()).reshape(1))
    if classifier is not None:
        # The logits above used the old relative-head bias; the router does not see the relative depth, so they hold.
        gap = torch.cat(logits)[:, 1] - torch.cat(logits)[:, 0]
        classifier.linear2.bias[1] -= gap.quantile(0.5)
