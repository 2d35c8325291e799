"""ZoeDepth metric depth on the MiDaS BEiT-DPT core, one file per part of the paper's figure 2: `bins` (seed bins,
projectors), `attractors`, `log_binomial`, `metric_bins` (one domain's head), `router` (NK), wired in `zoedepth`."""

from beit_flax.models.zoedepth.config import PRESETS, BinConfig, RouterConfig, ZoeDepthConfig
from beit_flax.models.zoedepth.params import param_shapes
from beit_flax.models.zoedepth.zoedepth import ZoeDepth, ZoeDepthOutput

__all__ = ["PRESETS", "BinConfig", "RouterConfig", "ZoeDepth", "ZoeDepthConfig", "ZoeDepthOutput", "param_shapes"]
