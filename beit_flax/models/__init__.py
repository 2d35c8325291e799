"""The model families, one folder each (`dpt`: MiDaS v3.1 BEiT-DPT; `zoedepth`: ZoeDepth on the DPT core), what
they share (`family`: the interface the application layer asks; `depth_output`: what a map means; `precision`), and
the `registry` that lists them. The names below are the package's public model API (`beit_flax.DPT`, ...)."""

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
    "Family",
    "ZoeDepth",
    "ZoeDepthConfig",
    "postprocess",
    "preprocess",
]
