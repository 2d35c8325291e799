"""Weights by name: `resolve` turns a weights file, a PyTorch checkpoint or transformers folder, a known name
(`KNOWN`) or a hub repo id into a beit-flax .msgpack, downloading, verifying, converting and caching on the way.

Imports neither torch nor huggingface_hub until a checkpoint is converted or a hub repo is asked for.
"""

from beit_flax.hub.cache import WEIGHTS_ENV, weights_dir
from beit_flax.hub.download import DigestError, DownloadError, NoSpaceError, TooLargeError
from beit_flax.hub.resolve import NotCachedError, load, resolve
from beit_flax.hub.sources import KNOWN, MIRROR_ENV, Known

__all__ = [
    "KNOWN",
    "MIRROR_ENV",
    "WEIGHTS_ENV",
    "DigestError",
    "DownloadError",
    "Known",
    "NoSpaceError",
    "NotCachedError",
    "TooLargeError",
    "load",
    "resolve",
    "weights_dir",
]
