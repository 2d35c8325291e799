"""PyTorch checkpoint <-> beit-flax weights, for every model family: `open_checkpoint` reads a checkpoint without
running code, `torch_to_flax` hands it to the family whose key table claims it (`models.registry.detect`).

The shared machinery lives here (`checkpoint`: the reader; `rules`: the key-table building blocks); each family's
tables and converters live in its folder (`models/<family>/convert/`). Needs torch for `.pt` files (the `[convert]`
extra); `beit_flax` alone never imports it.
"""

from beit_flax.convert.checkpoint import Checkpoint, ConversionError, open_checkpoint
from beit_flax.convert.rules import Converted

__all__ = ["Checkpoint", "ConversionError", "Converted", "open_checkpoint", "torch_to_flax"]


def torch_to_flax(checkpoint: Checkpoint, *, max_depth: float | None = None) -> Converted:
    """Convert an opened checkpoint with the converter of its model family; ConversionError when no family reads it
    (the message says what it looks like, or what this beit-flax reads). max_depth: the checkpoint is a metric model
    of this range in meters, for a family whose files do not say (`Checkpoints.takes_max_depth`); refused for
    others."""
    from beit_flax.models import registry  # here: the families' converters import this package's modules

    found = registry.detect(checkpoint.shapes)
    if found is None:
        raise ConversionError(f"{checkpoint.path}: {registry.unsupported(checkpoint.shapes)}")
    family, _ = found
    if max_depth is None:
        return family.checkpoints.to_flax(checkpoint)
    if not family.checkpoints.takes_max_depth:
        raise ConversionError(
            f"{checkpoint.path}: --max-depth is not for {family.title} checkpoints (they say their output)"
        )
    return family.checkpoints.to_flax(checkpoint, max_depth=max_depth)
