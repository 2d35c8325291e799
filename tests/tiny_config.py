"""The tiny DPT-BEiT configuration of the fast tests (`beit_flax.models.dpt.config.TINY`, stated once there);
`torch_reference.TINY` is its spec. 16 x its 4 x 4 training grid gives the net size 64, which the converter infers
from a checkpoint too."""

from beit_flax.models.dpt.config import TINY

__all__ = ["TINY"]
