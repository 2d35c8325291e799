"""The Depth Anything family (V1, V2) as the application layer sees it (`family.Family`): relative inverse depth,
or meters for V2's metric fine-tunes, from the original `infer_image` pipeline; the release `.pth` files and
transformers' Depth Anything folders."""

from __future__ import annotations

from beit_flax.models.depth_anything.config import PATCH_SIZE, PRESETS, TINY, DepthAnythingConfig
from beit_flax.models.depth_anything.convert import to_flax, to_torch
from beit_flax.models.depth_anything.convert.hf_config import hf_config_dict
from beit_flax.models.depth_anything.depth_anything import DepthAnything
from beit_flax.models.depth_anything.params import param_shapes
from beit_flax.models.depth_anything.processing import processing
from beit_flax.models.depth_output import RELATIVE, MetricDepth
from beit_flax.models.family import Checkpoints, Family, Release

_HF = "https://huggingface.co/"
_SIZES = {
    "small": ("vits", "Small", "Apache-2.0"),
    "base": ("vitb", "Base", "CC-BY-NC-4.0"),
    "large": ("vitl", "Large", "CC-BY-NC-4.0"),
}


def _releases() -> tuple[Release, ...]:
    """V2 relative and metric (indoor: Hypersim, outdoor: Virtual KITTI) and V1; Small is Apache-2.0, Base and
    Large CC-BY-NC-4.0 (non-commercial) for V2, V1 all Apache-2.0 (the model cards)."""
    out = []
    for size, (enc, title, licence) in _SIZES.items():
        repo = f"depth-anything/Depth-Anything-V2-{title}"
        out.append(
            Release(
                f"depth_anything_v2_{size}",
                f"{_HF}{repo}/resolve/main/depth_anything_v2_{enc}.pth",
                f"{repo}-hf",
                licence=licence,
            )
        )
        for scene, dataset, name in (("indoor", "hypersim", "Hypersim"), ("outdoor", "vkitti", "VKITTI")):
            folder = f"{_HF}depth-anything/Depth-Anything-V2-Metric-{name}-{title}/resolve/main/"
            file = f"{folder}depth_anything_v2_metric_{dataset}_{enc}.pth"
            hub = f"depth-anything/Depth-Anything-V2-Metric-{scene.title()}-{title}-hf"
            out.append(Release(f"depth_anything_v2_metric_{scene}_{size}", file, hub, licence=licence))
        v1 = f"{_HF}spaces/LiheYoung/Depth-Anything/resolve/main/checkpoints/depth_anything_{enc}14.pth"
        out.append(
            Release(f"depth_anything_v1_{size}", v1, f"LiheYoung/depth-anything-{size}-hf", licence="Apache-2.0")
        )
    return tuple(out)


FAMILY = Family(
    name="depth_anything",
    title="Depth Anything",
    config_class=DepthAnythingConfig,
    presets=PRESETS,
    tiny=TINY,
    module=DepthAnything,
    param_shapes=param_shapes,
    backbone_path="",
    encoder_depth=lambda config: config.depth,
    init_constants={"head/conv3/bias": 1.0},  # as for MiDaS: a ReLU head starts out non-zero
    input_multiple=lambda config: PATCH_SIZE,
    output=lambda config: MetricDepth(config.max_depth) if config.metric else RELATIVE,
    processing=processing,
    # relative: the scale-and-shift-invariant loss Depth Anything trains with; metric: its metric_depth SiLogLoss
    default_loss=lambda config: "silog-da" if config.metric else "ssimae",
    checkpoints=Checkpoints(
        detect=to_flax.detect_layout,
        to_flax=to_flax.to_flax,
        to_torch=to_torch.to_torch,
        layouts=("release", "hf-v4", "hf-v5"),
        description=to_flax.DESCRIPTION,
        hf_config=hf_config_dict,
        takes_max_depth=True,
    ),
    releases=_releases(),
)
