"""Read PyTorch checkpoints without executing anything: `torch.load(weights_only=True)` and safetensors.

A `Checkpoint` knows every tensor's name and shape up front and hands out tensors one at a time as float32 numpy
arrays, releasing its own copy as it goes, so converting never holds two copies of the whole model.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


class ConversionError(ValueError):
    """A checkpoint that cannot be converted; the message names the file or the keys."""


class Checkpoint:
    """Tensor names and shapes of a checkpoint, plus a loader that returns each tensor once as float32 numpy."""

    def __init__(
        self,
        path: Path,
        shapes: dict[str, tuple[int, ...]],
        fetch: Callable[[str], Any],
        hf_config: dict[str, Any] | None,
    ) -> None:
        self.path = path
        self.shapes = shapes
        self.hf_config = hf_config
        self._fetch = fetch

    def take(self, key: str) -> np.ndarray:
        """The tensor `key` as a float32 numpy array (fp16 / bf16 are widened); each key may be taken once."""
        import torch

        tensor = self._fetch(key)
        if not isinstance(tensor, torch.Tensor):
            raise ConversionError(f"{self.path}: entry {key!r} is a {type(tensor).__name__}, not a tensor")
        if tensor.is_floating_point():
            tensor = tensor.to(torch.float32)
        return tensor.detach().cpu().numpy()


def _torch_state_dict(path: Path) -> dict[str, Any]:
    import torch

    try:
        # mmap keeps the file's pages out of our heap; legacy (non-zip) files cannot be mapped.
        loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as err:
        if "mmap" not in str(err):
            raise
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(loaded, dict) and isinstance(loaded.get("model"), dict):  # a training checkpoint
        loaded = loaded["model"]
    if not isinstance(loaded, dict) or not all(isinstance(k, str) for k in loaded):
        raise ConversionError(f"{path}: not a state dict (a {type(loaded).__name__} with non-name keys)")
    return loaded


def _find_weights_file(directory: Path) -> Path:
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (directory / name).is_file():
            return directory / name
    raise ConversionError(f"{directory}: no model.safetensors or pytorch_model.bin in this folder")


def open_checkpoint(path: str | Path) -> Checkpoint:
    """Open a MiDaS `.pt`, a transformers `.safetensors` / `.bin`, or a folder holding one plus `config.json`."""
    path = Path(path)
    if path.is_dir():
        path = _find_weights_file(path)
    if not path.is_file():
        raise ConversionError(f"{path}: no such file")
    config_file = path.parent / "config.json"
    hf_config = json.loads(config_file.read_text()) if config_file.is_file() else None

    if path.suffix == ".safetensors":
        from safetensors import safe_open

        handle = safe_open(str(path), framework="pt")
        shapes = {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}  # noqa: SIM118 (not a dict)
        return Checkpoint(path, shapes, handle.get_tensor, hf_config)

    state = _torch_state_dict(path)
    shapes = {key: tuple(getattr(value, "shape", ())) for key, value in state.items()}
    return Checkpoint(path, shapes, state.pop, hf_config)
