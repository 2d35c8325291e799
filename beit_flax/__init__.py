"""beit-flax: DPT monocular depth in JAX/Flax (MiDaS v3.1 BEiT-DPT, ZoeDepth, Depth Anything V1 / V2), with
PyTorch checkpoint converters. Importing this package never imports torch (nor huggingface_hub: both are imported
when a checkpoint is converted or a hub repo is asked for)."""

from beit_flax.hub import load  # weights.load behind the resolver: files, checkpoints, names, hub repo ids
from beit_flax.models import (
    DPT,
    FAMILIES,
    PRESETS,
    DepthAnything,
    DepthAnythingConfig,
    DPTConfig,
    ZoeDepth,
    ZoeDepthConfig,
    postprocess,
    preprocess,
)
from beit_flax.pipeline import predict
from beit_flax.weights import FORMAT_VERSION, save

__all__ = [
    "DPT",
    "FAMILIES",
    "FORMAT_VERSION",
    "PRESETS",
    "DPTConfig",
    "DepthAnything",
    "DepthAnythingConfig",
    "ZoeDepth",
    "ZoeDepthConfig",
    "load",
    "postprocess",
    "predict",
    "preprocess",
    "save",
]
