"""The beit-flax weights file: one msgpack (flax.serialization) holding a format tag, the config and the parameters.

    {"format": "beit-flax", "format_version": 1, "config": {...DPTConfig fields...}, "params": {...float32 tree...}}

`load` checks every parameter's path and shape against the config before anything is traced, so a bad file fails
with the file name and the offending path instead of deep inside XLA.
"""

from __future__ import annotations

import functools
import os
import secrets
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import msgpack
import numpy as np
from flax import serialization, traverse_util

from beit_flax.config import DPTConfig
from beit_flax.dpt import DPT

FORMAT = "beit-flax"
FORMAT_VERSION = 1


@functools.lru_cache(maxsize=8)
def _param_shapes(config: DPTConfig) -> tuple[tuple[str, tuple[int, ...]], ...]:
    # Tracing BEiT-L takes seconds (converting and saving both need the shapes, hence the cache). Shapes do not
    # depend on the input size; a 2x2 patch grid traces the smallest attention and relative-position gathers.
    side = 2 * config.patch_size
    images = jax.ShapeDtypeStruct((1, side, side, 3), jnp.float32)
    variables = jax.eval_shape(DPT(config).init, jax.random.key(0), images)
    flat = traverse_util.flatten_dict(variables["params"], sep="/")
    return tuple((path, tuple(leaf.shape)) for path, leaf in flat.items())


def param_shapes(config: DPTConfig) -> dict[str, tuple[int, ...]]:
    """{"patch_embed/proj/kernel": (16, 16, 3, C), ...}: every parameter the model with `config` has."""
    return dict(_param_shapes(config.replace(dtype="float32")))


def check_params(config: DPTConfig, params: Any, source: str = "params") -> None:
    """Raise ValueError listing every missing, unexpected or wrongly shaped parameter path."""
    expected = param_shapes(config)
    flat = traverse_util.flatten_dict(params, sep="/")
    got = {path: tuple(np.shape(leaf)) for path, leaf in flat.items()}
    problems = [f"missing {p} {expected[p]}" for p in sorted(expected.keys() - got.keys())]
    problems += [f"unexpected {p} {got[p]}" for p in sorted(got.keys() - expected.keys())]
    problems += [
        f"{p} has shape {got[p]}, config needs {expected[p]}"
        for p in sorted(expected.keys() & got.keys())
        if got[p] != expected[p]
    ]
    problems += [
        f"{p} has dtype {leaf.dtype}, not a float type"
        for p, leaf in flat.items()
        if not jnp.issubdtype(getattr(leaf, "dtype", np.dtype(object)), jnp.floating)
    ]
    if problems:
        shown = "; ".join(problems[:10]) + (f"; ... {len(problems) - 10} more" if len(problems) > 10 else "")
        raise ValueError(f"{source}: parameters do not match the config: {shown}")


def atomic_write(path: str | os.PathLike, chunks: Iterable[bytes]) -> None:
    """Write `chunks` to a temp file beside `path`, fsync, then rename: readers never see a partial file, and an
    existing file is only replaced once the new one is complete."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    # created like open() would (0666 minus the umask, applied by the kernel), unlike mkstemp's 0600; O_EXCL: never
    # write through someone else's file or link
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    atomic_write(path, [data])


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


def save(path: str | os.PathLike, config: DPTConfig, params: Any) -> None:
    """Write `params` (float32, checked against `config`) and `config` to a msgpack file, atomically."""
    params = jax.tree.map(lambda leaf: np.asarray(leaf, dtype=np.float32), params)
    check_params(config, params)
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, "config": config.to_dict(), "params": params}
    atomic_write(path, _msgpack_chunks(payload))


def load(path: str | os.PathLike, dtype: str | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Read a file written by `save` (or `convert_weights`) and return `(model, params)`.

    dtype: optional compute dtype override ("float32", "bfloat16", "float16"); parameters stay float32.
    Raises ValueError naming the file and the reason for anything that is not a valid beit-flax weights file.
    """
    path = Path(path)
    try:
        payload = serialization.msgpack_restore(path.read_bytes())
    except OSError:
        raise
    except Exception as err:  # msgpack raises a zoo of types on corrupt input
        raise ValueError(f"{path}: not a readable beit-flax weights file ({type(err).__name__}: {err})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path}: not a beit-flax weights file (no '{FORMAT}' format tag)")
    if payload.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{path}: format version {payload.get('format_version')!r}, this beit-flax reads {FORMAT_VERSION}"
        )
    try:
        config = DPTConfig.from_dict(dict(payload["config"]))
        if dtype is not None:
            config = config.replace(dtype=dtype)
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path}: bad config: {err}") from None
    params = payload.get("params")
    if not isinstance(params, dict):
        raise ValueError(f"{path}: no parameter tree")
    check_params(config, params, source=str(path))
    return DPT(config), params
