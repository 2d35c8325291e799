"""MiDaS v3.1 BEiT-DPT, one file per stage of the DPT figure: patch_embed -> encoder (attention,
relative_position) -> reassemble -> fusion -> head, wired in `dpt`; `resize` is the torch-exact bilinear rule."""

from beit_flax.models.dpt.config import PRESETS, DPTConfig
from beit_flax.models.dpt.dpt import DPT

__all__ = ["DPT", "PRESETS", "DPTConfig"]
