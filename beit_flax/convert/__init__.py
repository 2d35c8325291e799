"""PyTorch checkpoint <-> beit-flax weights. Needs torch (the `[convert]` extra); `beit_flax` alone never imports it."""

from beit_flax.convert.checkpoint import ConversionError, open_checkpoint
from beit_flax.convert.torch_to_flax import Converted, torch_to_flax

__all__ = ["ConversionError", "Converted", "open_checkpoint", "torch_to_flax"]
