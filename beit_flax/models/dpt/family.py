"""The MiDaS v3.1 BEiT-DPT family as the application layer sees it (`family.Family`): relative inverse depth from
MiDaS run.py's pipeline, the release `.pt` files and transformers' DPT-BEiT folders, the three released models."""

from __future__ import annotations

from beit_flax.models.depth_output import RELATIVE
from beit_flax.models.dpt.config import PRESETS, TINY, DPTConfig
from beit_flax.models.dpt.convert import to_flax, to_torch
from beit_flax.models.dpt.convert.hf_config import hf_config_dict
from beit_flax.models.dpt.dpt import DPT
from beit_flax.models.dpt.params import param_shapes
from beit_flax.models.dpt.processing import processing
from beit_flax.models.family import Checkpoints, Family, Release

_MIDAS = "https://github.com/isl-org/MiDaS/releases/download/v3_1/"

FAMILY = Family(
    name="dpt",
    title="MiDaS v3.1 BEiT-DPT",
    config_class=DPTConfig,
    presets=PRESETS,
    tiny=TINY,
    module=DPT,
    param_shapes=param_shapes,
    backbone_path="",
    encoder_depth=lambda config: config.depth,
    # with 0 the final ReLU starts out zeroing most pixels, and a constant prediction has no gradient under the
    # scale-and-shift-invariant loss (see `params.init_params`)
    init_constants={"head/conv3/bias": 1.0},
    input_multiple=lambda config: config.patch_size,
    output=lambda config: RELATIVE,
    processing=processing,
    default_loss=lambda config: "midas",
    checkpoints=Checkpoints(
        detect=to_flax.detect_layout,
        to_flax=to_flax.to_flax,
        to_torch=to_torch.to_torch,
        layouts=("midas", "hf-v4", "hf-v5"),
        description=to_flax.DESCRIPTION,
        hf_config=hf_config_dict,
        explain=to_flax.explain,
    ),
    releases=tuple(
        Release(name, f"{_MIDAS}{name}.pt", f"Intel/{name.replace('_', '-')}")
        for name in ("dpt_beit_large_512", "dpt_beit_large_384", "dpt_beit_base_384")
    ),
)
