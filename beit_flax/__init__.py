"""beit-flax: DPT monocular depth in JAX/Flax (MiDaS v3.1 BEiT-DPT, ZoeDepth, Depth Anything V1 / V2), with
PyTorch checkpoint converters. Importing this package never imports torch (nor huggingface_hub: both are imported
when a checkpoint is converted or a hub repo is asked for).

The names below are imported when first used (PEP 562), so that `import beit_flax.<module>` costs only that module:
the console scripts (`beit_flax.entry`) handle Ctrl-C before jax is imported.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "load": "beit_flax.hub",  # weights.load behind the resolver: files, checkpoints, names, hub repo ids
    "DPT": "beit_flax.models",
    "FAMILIES": "beit_flax.models",
    "PRESETS": "beit_flax.models",
    "DepthAnything": "beit_flax.models",
    "DepthAnythingConfig": "beit_flax.models",
    "DPTConfig": "beit_flax.models",
    "ZoeDepth": "beit_flax.models",
    "ZoeDepthConfig": "beit_flax.models",
    "postprocess": "beit_flax.models",
    "preprocess": "beit_flax.models",
    "predict": "beit_flax.pipeline",
    "FORMAT_VERSION": "beit_flax.weights",
    "save": "beit_flax.weights",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time `__getattr__` imports them
    from beit_flax.hub import load as load
    from beit_flax.models import DPT as DPT
    from beit_flax.models import FAMILIES as FAMILIES
    from beit_flax.models import PRESETS as PRESETS
    from beit_flax.models import DepthAnything as DepthAnything
    from beit_flax.models import DepthAnythingConfig as DepthAnythingConfig
    from beit_flax.models import DPTConfig as DPTConfig
    from beit_flax.models import ZoeDepth as ZoeDepth
    from beit_flax.models import ZoeDepthConfig as ZoeDepthConfig
    from beit_flax.models import postprocess as postprocess
    from beit_flax.models import preprocess as preprocess
    from beit_flax.pipeline import predict as predict
    from beit_flax.weights import FORMAT_VERSION as FORMAT_VERSION
    from beit_flax.weights import save as save


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value  # once
        return value
    try:  # a submodule not imported yet: `import beit_flax; beit_flax.hub.resolve(...)`
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as err:
        if err.name != f"{__name__}.{name}":
            raise
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
