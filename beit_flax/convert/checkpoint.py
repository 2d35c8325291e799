"""Read PyTorch checkpoints without executing anything: `torch.load(weights_only=True)`, and safetensors read here.

Nothing is memory-mapped: a mapped file that is truncated while we read it kills the process with SIGBUS, and
torch's `mmap=True` reads the compressed bytes of a re-zipped (deflated) `.pt` as if they were tensor data. So
`torch.load` reads a `.pt` whole (after its zip directory is checked: entries may not expand to more than a few
times the file, no zip bombs), and a `.safetensors` file is read one tensor at a time with `pread`, at offsets its
header gives, each checked against the file's size; a short read is a clean error.

A `Checkpoint` knows every tensor's name, shape and dtype up front and hands out tensors one at a time as float32
numpy arrays, releasing its own copy as it goes, so converting never holds two copies of the whole model.
"""

from __future__ import annotations

import json
import math
import os
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from beit_flax.files import MAX_CHECKPOINT_BYTES, InputError, check_input, read_input

FLOAT_DTYPES = ("float32", "float16", "bfloat16")  # the dtypes a checkpoint's parameters may have (README)
MAX_CONFIG_BYTES = 2**20  # transformers' config.json: a few KB
MAX_HEADER_BYTES = 100 * 2**20  # safetensors' own limit on its JSON header
# Deflated tensors shrink by a few percent; an archive that claims to expand by more than this is refused (a zip bomb
# makes a small file allocate without end). The slack covers tiny checkpoints of all-zero tensors.
MAX_EXPANSION, EXPANSION_SLACK = 4, 64 * 2**20

# safetensors dtype -> (name as torch spells it, bytes per element)
_SAFETENSORS_DTYPES = {
    "F32": ("float32", 4),
    "F16": ("float16", 2),
    "BF16": ("bfloat16", 2),
    "F64": ("float64", 8),
    "I64": ("int64", 8),
    "I32": ("int32", 4),
    "I16": ("int16", 2),
    "I8": ("int8", 1),
    "U64": ("uint64", 8),
    "U32": ("uint32", 4),
    "U16": ("uint16", 2),
    "U8": ("uint8", 1),
    "BOOL": ("bool", 1),
    "F8_E4M3": ("float8_e4m3fn", 1),
    "F8_E5M2": ("float8_e5m2", 1),
    "C64": ("complex64", 8),
}


class ConversionError(ValueError):
    """A checkpoint that cannot be converted; the message names the file or the keys."""


class Checkpoint:
    """Tensor names, shapes and dtypes of a checkpoint, plus a loader that returns each tensor once as float32."""

    def __init__(
        self,
        path: Path,
        shapes: dict[str, tuple[int, ...]],
        dtypes: dict[str, str | None],
        fetch: Callable[[str], Any],
        hf_config: dict[str, Any] | None,
    ) -> None:
        self.path = path
        self.shapes = shapes
        self.dtypes = dtypes  # "float32", "int64", ... as torch names them; None for an entry that is no tensor
        self.hf_config = hf_config
        self._fetch = fetch

    def take(self, key: str) -> np.ndarray:
        """The tensor `key` as a float32 numpy array (fp16 / bf16 are widened); each key may be taken once.
        ConversionError naming the key for anything but a float32 / float16 / bfloat16 tensor."""
        dtype = self.dtypes[key]
        if dtype not in FLOAT_DTYPES:
            what = "not a tensor" if dtype is None else f"a {dtype} tensor"
            raise ConversionError(f"{self.path}: {key} is {what}; parameters must be {' / '.join(FLOAT_DTYPES)}")
        tensor = self._fetch(key)
        if isinstance(tensor, np.ndarray):
            return tensor
        import torch

        return tensor.detach().to("cpu", dtype=torch.float32).numpy()


def _check_zip(path: Path) -> None:
    """Refuse a zip archive whose entries claim to expand beyond MAX_EXPANSION times the file (see the module doc).
    Anything zipfile cannot parse is left to torch.load, which reports it."""
    try:
        if not zipfile.is_zipfile(path):
            return
        with zipfile.ZipFile(path) as archive:
            expanded = sum(info.file_size for info in archive.infolist())
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return
    size = path.stat().st_size
    if expanded > MAX_EXPANSION * size + EXPANSION_SLACK:
        raise ConversionError(
            f"{path}: its zip entries expand to {expanded / 2**20:.0f} MiB, {expanded / size:.0f}x the file: refused "
            f"as a possible zip bomb (re-save it with torch.save)"
        )


def _torch_state_dict(path: Path) -> dict[str, Any]:
    import torch

    _check_zip(path)
    loaded = torch.load(path, map_location="cpu", weights_only=True)  # not mmap=True: see the module doc
    if isinstance(loaded, dict) and isinstance(loaded.get("model"), dict):  # a training checkpoint
        loaded = loaded["model"]
    if not isinstance(loaded, dict) or not all(isinstance(k, str) for k in loaded):
        raise ConversionError(f"{path}: not a state dict (a {type(loaded).__name__} with non-name keys)")
    return loaded


def _pread_exact(fd: int, buffer: memoryview, offset: int, path: Path, key: str) -> None:
    done = 0
    while done < len(buffer):  # one read returns at most ~2 GiB on Linux
        count = os.preadv(fd, [buffer[done:]], offset + done)
        if count == 0:
            raise ConversionError(
                f"{path}: cannot read checkpoint: the file ends inside {key} (truncated while being read?)"
            )
        done += count


def _safetensors(path: Path, hf_config: dict[str, Any] | None) -> Checkpoint:
    """A safetensors file, read with pread (see the module doc); its header is validated whole before any tensor."""
    bad = lambda reason: ConversionError(f"{path}: cannot read checkpoint: not a valid safetensors file ({reason})")
    file = open(path, "rb")  # noqa: SIM115 (kept open by `fetch`, so as long as the Checkpoint; closed with it)
    try:
        entries = _safetensors_header(file, bad)
    except BaseException:
        file.close()
        raise

    def fetch(key: str) -> np.ndarray:
        name, shape, offset, nbytes = entries.pop(key)
        raw = np.empty(nbytes, np.uint8)
        _pread_exact(file.fileno(), memoryview(raw), offset, path, key)
        if name == "bfloat16":  # the upper half of a float32
            return (raw.view("<u2").astype(np.uint32) << 16).view(np.float32).reshape(shape)
        return raw.view({"float32": "<f4", "float16": "<f2"}[name]).astype(np.float32, copy=False).reshape(shape)

    shapes = {key: entry[1] for key, entry in entries.items()}
    return Checkpoint(path, shapes, {key: entry[0] for key, entry in entries.items()}, fetch, hf_config)


def _safetensors_header(file: Any, bad: Callable[[str], ConversionError]) -> dict[str, tuple]:
    """{key: (dtype name, shape, file offset, bytes)} from a safetensors header, every entry checked against the
    file's size (the offsets) and against itself (shape x dtype = bytes)."""
    fd, size = file.fileno(), os.fstat(file.fileno()).st_size
    length = int.from_bytes(os.pread(fd, 8, 0), "little") if size >= 8 else -1
    if not 0 < length <= min(MAX_HEADER_BYTES, size - 8):
        raise bad(f"header length {length} for a file of {size} bytes")
    try:
        header = json.loads(os.pread(fd, length, 8))
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise bad(f"header is not JSON: {type(err).__name__}") from None
    if not isinstance(header, dict):
        raise bad("header is not a JSON object")
    header.pop("__metadata__", None)
    base, entries = 8 + length, {}
    for key, entry in header.items():
        if not isinstance(entry, dict) or str(entry.get("dtype")) not in _SAFETENSORS_DTYPES:
            raise bad(f"{key}: no known dtype")
        shape, offsets = entry.get("shape"), entry.get("data_offsets")
        if not (
            isinstance(shape, list) and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
        ):
            raise bad(f"{key}: shape {shape!r}")
        name, itemsize = _SAFETENSORS_DTYPES[str(entry["dtype"])]
        if not (
            isinstance(offsets, list)
            and len(offsets) == 2
            and all(type(o) is int for o in offsets)
            and 0 <= offsets[0] <= offsets[1] <= size - base
            and offsets[1] - offsets[0] == math.prod(shape) * itemsize
        ):
            raise bad(f"{key}: data offsets {offsets!r} for a {name} tensor of shape {tuple(shape)}")
        entries[key] = (name, tuple(shape), base + offsets[0], offsets[1] - offsets[0])
    return entries


def _find_weights_file(directory: Path) -> Path:
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (directory / name).exists() or (directory / name).is_symlink():  # a FIFO etc. is refused by name
            return directory / name
    raise ConversionError(f"{directory}: no model.safetensors or pytorch_model.bin in this folder")


def checkpoint_files(path: str | Path) -> list[Path]:
    """The files `open_checkpoint(path)` reads: the weights file, and config.json beside it if there is one."""
    path = Path(path)
    if path.is_dir():
        try:
            path = _find_weights_file(path)
        except ConversionError:
            return []
    config = path.parent / "config.json"
    return [path, config] if config.exists() else [path]


def _hf_config(config_file: Path) -> dict[str, Any] | None:
    if not (config_file.exists() or config_file.is_symlink()):
        return None
    try:
        config = json.loads(read_input(config_file, MAX_CONFIG_BYTES, "config.json"))
    except (UnicodeDecodeError, ValueError, RecursionError) as err:  # InputError and bad JSON are ValueErrors
        message = str(err) if isinstance(err, InputError) else f"{config_file}: not valid JSON ({err})"
        raise ConversionError(message) from None
    if not isinstance(config, dict):
        raise ConversionError(f"{config_file}: not a JSON object")
    return config


def open_checkpoint(path: str | Path) -> Checkpoint:
    """Open a MiDaS `.pt`, a transformers `.safetensors` / `.bin`, or a folder holding one plus `config.json`."""
    path = Path(path)
    if path.is_dir():
        path = _find_weights_file(path)
    try:
        check_input(path, MAX_CHECKPOINT_BYTES, "checkpoint")
    except InputError as err:
        raise ConversionError(str(err)) from None
    hf_config = _hf_config(path.parent / "config.json")
    if path.suffix == ".safetensors":
        return _safetensors(path, hf_config)
    import torch

    state = _torch_state_dict(path)
    shapes = {key: tuple(getattr(value, "shape", ())) for key, value in state.items()}
    dtypes = {
        key: str(value.dtype).removeprefix("torch.") if isinstance(value, torch.Tensor) else None
        for key, value in state.items()
    }
    return Checkpoint(path, shapes, dtypes, state.pop, hf_config)
