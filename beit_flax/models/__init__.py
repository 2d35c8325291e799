"""The model families, one folder each (`dpt`: MiDaS v3.1 BEiT-DPT; `zoedepth`: ZoeDepth on the DPT core;
`depth_anything`: Depth Anything V1 / V2, DINOv2 + the DPT head), what
they share (`family`: the interface the application layer asks; `depth_output`: what a map means; `precision`), and
the `registry` that lists them. The names below are the package's public model API (`beit_flax.DPT`, ...)."""

from beit_flax.models.depth_anything.config import DepthAnythingConfig
from beit_flax.models.depth_anything.depth_anything import DepthAnything
from beit_flax.models.dpt.config import PRESETS, DPTConfig
from beit_flax.models.dpt.dpt import DPT
from beit_flax.models.dpt.processing import postprocess, preprocess
from beit_flax.models.family import Family
from beit_flax.models.registry import FAMILIES
from beit_flax.models.zoedepth.config import ZoeDepthConfig
from beit_flax.models.zoedepth.zoedepth import ZoeDepth

__all__ = [
    "DPT",
    "FAMILIES",
    "PRESETS",
    "DPTConfig",
    "DepthAnything",
    "DepthAnythingConfig",
    "Family",
    "ZoeDepth",
    "ZoeDepthConfig",
    "postprocess",
    "preprocess",
]
