"""beit-flax: MiDaS v3.1 BEiT-DPT monocular depth in JAX/Flax. Importing this package never imports torch."""

from beit_flax.models.dpt.config import PRESETS, DPTConfig
from beit_flax.models.dpt.dpt import DPT
from beit_flax.pipeline import predict
from beit_flax.transforms import postprocess, preprocess
from beit_flax.weights import FORMAT_VERSION, load, save

__all__ = ["DPT", "DPTConfig", "FORMAT_VERSION", "PRESETS", "load", "postprocess", "predict", "preprocess", "save"]
