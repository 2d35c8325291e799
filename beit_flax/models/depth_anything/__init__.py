"""Depth Anything V1 / V2: DINOv2 + the DPT head (relative inverse depth, or metric depth in meters)."""

from beit_flax.models.depth_anything.config import PRESETS, TINY, DepthAnythingConfig
from beit_flax.models.depth_anything.depth_anything import DepthAnything

__all__ = ["PRESETS", "TINY", "DepthAnything", "DepthAnythingConfig"]
