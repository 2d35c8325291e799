"""The ZoeDepth family as the application layer sees it (`family.Family`): metric depth in meters from ZoeDepth's
`infer_pil` pipeline, the release `.pt` files and transformers' ZoeDepth folders, ZoeD_M12_N / _K / _NK."""

from __future__ import annotations

from beit_flax.models.depth_output import MetricDepth
from beit_flax.models.family import Checkpoints, Family, Release
from beit_flax.models.zoedepth.config import PRESETS, TINY, ZoeDepthConfig
from beit_flax.models.zoedepth.convert import to_flax, to_torch
from beit_flax.models.zoedepth.convert.hf_config import zoedepth_hf_config_dict
from beit_flax.models.zoedepth.params import param_shapes
from beit_flax.models.zoedepth.processing import depth_range_m, processing
from beit_flax.models.zoedepth.zoedepth import INPUT_MULTIPLE, ZoeDepth

_ZOE = "https://github.com/isl-org/ZoeDepth/releases/download/v1.0/"

FAMILY = Family(
    name="zoedepth",
    title="ZoeDepth",
    config_class=ZoeDepthConfig,
    presets=PRESETS,
    tiny=TINY,
    module=ZoeDepth,
    param_shapes=param_shapes,
    backbone_path="core/",
    encoder_depth=lambda config: config.core.depth,
    init_constants={"core/head/conv3/bias": 1.0},  # the core's, as for the DPT family
    input_multiple=lambda config: INPUT_MULTIPLE,
    output=lambda config: MetricDepth(depth_range_m(config)),
    processing=processing,
    default_loss=lambda config: "silog",
    checkpoints=Checkpoints(
        detect=to_flax.detect_layout,
        to_flax=to_flax.to_flax,
        to_torch=to_torch.to_torch,
        layouts=("release", "hf-v4", "hf-v5"),
        description=to_flax.DESCRIPTION,
        hf_config=zoedepth_hf_config_dict,
        release_key="model",  # ZoeD_M12_*.pt hold {"model": state_dict} (`zoedepth/models/model_io.py`)
    ),
    releases=(
        Release("zoedepth_nyu", _ZOE + "ZoeD_M12_N.pt", "Intel/zoedepth-nyu", preset="zoedepth_n"),
        Release("zoedepth_kitti", _ZOE + "ZoeD_M12_K.pt", "Intel/zoedepth-kitti", preset="zoedepth_k"),
        Release("zoedepth_nyu_kitti", _ZOE + "ZoeD_M12_NK.pt", "Intel/zoedepth-nyu-kitti", preset="zoedepth_nk"),
    ),
    extends="dpt",
)
