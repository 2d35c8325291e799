"""beit-flax: MiDaS v3.1 BEiT-DPT monocular depth in JAX/Flax. Importing this package never imports torch
(nor huggingface_hub: both are imported when a checkpoint is converted or a hub repo is asked for)."""

from beit_flax.hub import load  # weights.load behind the resolver: files, checkpoints, names, hub repo ids
from beit_flax.models.dpt.config import PRESETS, DPTConfig
from beit_flax.models.dpt.dpt import DPT
from beit_flax.pipeline import predict
from beit_flax.transforms import postprocess, preprocess
from beit_flax.weights import FORMAT_VERSION, save

__all__ = ["DPT", "FORMAT_VERSION", "PRESETS", "DPTConfig", "load", "postprocess", "predict", "preprocess", "save"]
