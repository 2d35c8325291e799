"""The beit-flax weights file: one msgpack (flax.serialization) holding a format tag, the config and the parameters.

    {"format": "beit-flax", "format_version": 2, "model": "dpt" | "zoedepth" | ...,
     "config": {...the family's config fields...}, "params": {...float32 tree...}}

"model" names the model family (`models.registry`) the file holds; files without it (all written before ZoeDepth)
are DPT. A beit-flax that predates a family refuses its files: by the unknown name, or (before ZoeDepth, when the
key was not read) at the config ("bad config").

Version 1 files also stored the compute dtype in the config; they still load (the dtype is ignored: it is chosen
when loading, `load(path, dtype=...)`). `load` reads only a regular file of at most MAX_WEIGHTS_BYTES, validates the
config (types and bounds) and checks every parameter's path and shape against it before anything is traced, so a bad
file fails with the file name and the offending path instead of deep inside XLA (or after minutes of tracing).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import msgpack
import numpy as np
from flax import serialization

from beit_flax.files import MAX_WEIGHTS_BYTES, atomic_write, read_input
from beit_flax.models import registry
from beit_flax.models.precision import check_dtype
from beit_flax.params import check_params

FORMAT = "beit-flax"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)


# First bytes of the PyTorch / safetensors files users may hand us instead (they need `convert_weights` first).
_CHECKPOINT_MAGIC = ((b"PK\x03\x04", "a PyTorch checkpoint (zip)"), (b"\x80", "a pickled PyTorch checkpoint"))


def _msgpack_chunks(tree: Any) -> Iterator[bytes]:
    """The bytes of `serialization.msgpack_serialize(tree)` for a tree of dicts, one leaf at a time.

    Packing leaf by leaf keeps a second full copy of a 1.4 GB model out of memory while writing.
    """
    if isinstance(tree, dict):
        packer = msgpack.Packer()
        yield packer.pack_map_header(len(tree))
        for key, value in tree.items():
            yield packer.pack(key)
            yield from _msgpack_chunks(value)
    else:
        yield serialization.msgpack_serialize(tree)


def save(path: str | os.PathLike, config: Any, params: Any) -> None:
    """Write `params` (float32, checked against `config`, any registered family's), the family's name and `config`
    to a msgpack file, atomically."""
    kind = registry.of_config(config).name
    params = jax.tree.map(lambda leaf: np.asarray(leaf, dtype=np.float32), params)
    check_params(config, params)
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": kind,
        "config": config.to_dict(),
        "params": params,
    }
    atomic_write(path, _msgpack_chunks(payload))


def _not_weights_file(path: Path, data: bytes) -> str:
    """Why `data` (which msgpack could not read) is not a weights file, with the fix when it is a checkpoint."""
    convert = f"convert it first: convert_weights {path} {path.with_suffix('.msgpack').name}"
    for magic, what in _CHECKPOINT_MAGIC:
        if data.startswith(magic):
            return f"{path}: {what}, not a beit-flax weights file; {convert}"
    header = int.from_bytes(data[:8], "little") if len(data) >= 8 else 0
    if 0 < header <= len(data) - 8 and data[8:9] == b"{":
        return f"{path}: a safetensors checkpoint, not a beit-flax weights file; {convert}"
    return f"{path}: not a beit-flax weights file (not readable as msgpack; convert_weights writes them)"


def load(path: str | os.PathLike, dtype: str = "float32") -> tuple[nn.Module, dict[str, Any]]:
    """Read a file written by `save` (or `convert_weights`) and return `(model, params)`: the module of the family the
    file names (`DPT`, `ZoeDepth`, ...; `models.registry.of_model` tells which).

    dtype: the model's compute dtype ("float32", "bfloat16", "float16"); parameters stay float32.
    Raises ValueError naming the file and the reason for anything that is not a valid beit-flax weights file (a
    PyTorch or safetensors checkpoint is named as such, with the `convert_weights` command to run).
    """
    check_dtype(dtype)
    path = Path(path)
    if path.is_dir():
        raise ValueError(
            f"{path}: a folder, not a beit-flax weights file (a transformers checkpoint folder? convert it first: "
            f"convert_weights {path} {path.name}.msgpack)"
        )
    data = read_input(path, MAX_WEIGHTS_BYTES, "beit-flax weights file")  # InputError: a ValueError
    try:
        payload = serialization.msgpack_restore(data)
    except Exception:  # msgpack raises a zoo of types on corrupt input
        raise ValueError(_not_weights_file(path, data)) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path}: not a beit-flax weights file (no '{FORMAT}' format tag)")
    if payload.get("format_version") not in READABLE_VERSIONS:
        raise ValueError(
            f"{path}: format version {payload.get('format_version')!r}, this beit-flax reads {READABLE_VERSIONS}"
        )
    kind = payload.get("model", registry.DEFAULT)
    if not isinstance(kind, str) or kind not in registry.FAMILIES:
        raise ValueError(f"{path}: unknown model kind {kind!r} (this beit-flax reads {sorted(registry.FAMILIES)})")
    family = registry.FAMILIES[kind]
    try:
        fields = payload.get("config")
        if not isinstance(fields, dict):
            raise TypeError(f"config must be a dict of fields, got a {type(fields).__name__}")
        config = family.config_class.from_dict(fields)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: bad config: {err}") from None
    params = payload.get("params")
    if not isinstance(params, dict):
        raise ValueError(f"{path}: no parameter tree")
    check_params(config, params, source=str(path))
    return family.build(config, dtype=dtype), params
