"""CPU runtimes for `beit-depth predict --runtime`: the model's ONNX export (`export.export_onnx`, rewritten into
the ops runtimes fuse) run by onnxruntime or OpenVINO instead of the jitted JAX program.

`RuntimeBatcher` is a `Batcher` whose batches run in the chosen runtime: the same grouping by input shape, the same
order and error handling, so `Predictor`, `pipeline` and every command run on it unchanged. One artifact serves a
network input size (H', W') at any batch size (dynamic batch): it is exported the first time that size is run,
which takes a while (BEiT-B 384: about a minute; BEiT-L 512: a few), and kept in the weights cache

    <weights cache>/onnx/<model>-<digest[:16]>-<H>x<W>.onnx

keyed by the model's architecture, its weights and the size (`artifact_key`); the `KEPT_ARTIFACTS` most recently
used are kept, older ones removed. Outputs equal the JAX path's within float32 rounding (tests: <= 1e-5 of the
map's max). Both runtimes compute in float32 (OpenVINO would otherwise pick bfloat16 on CPUs that have it), except
OpenVINO with a bfloat16 model (`--dtype bfloat16`): the same float32 artifact, inferred in bfloat16 where the CPU
has bfloat16 instructions (AVX-512 BF16, AMX), in float32 elsewhere.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from beit_flax.batcher import Batcher, check_batch_size
from beit_flax.files import atomic_write_bytes
from beit_flax.hub.cache import artifacts as cached_artifacts
from beit_flax.hub.cache import artifacts_dir as cache_artifacts_dir
from beit_flax.hub.cache import locked, remove, weights_dir
from beit_flax.models.precision import check_dtype

RUNTIMES = ("jax", "onnxruntime", "openvino")
"""`jax` is the `Batcher`; the others run the ONNX export on the CPU."""
ARTIFACT_FORMAT = "beit-flax onnx 2"
"""Part of every artifact's key: change it when the export writes a different graph for the same model."""
KEPT_ARTIFACTS = 4
"""ONNX files kept in the cache (each as large as the weights: BEiT-L about 1.3 GB), least recently used first out."""
KEPT_SESSIONS = 2
"""Loaded runtime sessions kept per process, one per input size (each holds the weights once more)."""
NEEDS = {"onnxruntime": ("onnxruntime",), "openvino": ("openvino",)}
"""The modules each runtime imports, besides the exporter's (jax2onnx, onnx, onnxscript)."""
DTYPES = {"onnxruntime": ("float32",), "openvino": ("float32", "bfloat16")}
"""The compute dtypes each runtime offers (the artifact is float32 either way)."""


def artifacts_dir(folder: str | os.PathLike | None = None) -> Path:
    """Where the artifacts live: `hub.cache.artifacts_dir` of the weights cache (`hub.cache.weights_dir`)."""
    return cache_artifacts_dir(weights_dir(folder))


def artifact_key(model: nn.Module, params: Any, size_hw: tuple[int, int]) -> str:
    """sha256 over `ARTIFACT_FORMAT`, the model's class and config, the network input size and every parameter
    (its path, dtype, shape and bytes): the same key for the same exported function."""
    digest = hashlib.sha256(f"{ARTIFACT_FORMAT}|{type(model).__qualname__}|{model.config!r}|{size_hw}".encode())
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        array = np.ascontiguousarray(leaf)
        digest.update(f"|{jax.tree_util.keystr(path)}|{array.dtype}|{array.shape}|".encode())
        digest.update(array.view(np.uint8).data)
    return digest.hexdigest()


def artifact(
    model: nn.Module,
    params: Any,
    size_hw: tuple[int, int],
    folder: str | os.PathLike | None = None,
    announce: Callable[[str], None] | None = None,
) -> Path:
    """The cached ONNX file of `model` with `params` for (B, H, W, 3) inputs, exported first if it is not there
    (one process at a time: a second one waits and finds it). Marks it most recently used."""
    from beit_flax.export import export_onnx

    cache = artifacts_dir(folder)
    cache.mkdir(parents=True, exist_ok=True)
    key = artifact_key(model, params, size_hw)
    path = cache / f"{type(model).__name__.lower()}-{key[:16]}-{size_hw[0]}x{size_hw[1]}.onnx"
    with locked(cache, key):
        if not path.is_file():
            if announce is not None:
                announce(f"exporting the model to ONNX for {size_hw[0]}x{size_hw[1]} inputs (once; kept in {cache})")
            data = export_onnx(model, params, size_hw)
            kept = sorted(cached_artifacts(weights_dir(folder)), key=_last_used)  # what `cache list` shows
            remove(kept[: -KEPT_ARTIFACTS + 1 or None])
            atomic_write_bytes(path, data)
        os.utime(path)
    return path


def _last_used(path: Path) -> float:
    """An artifact's modification time (`artifact` touches it on each use); 0 for one another process removed."""
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def import_openvino() -> Any:
    """`import openvino` with its telemetry declined. Imported as it is, the package reports to Google Analytics
    from a forked process (its model converter's telemetry, on unless the user opted out with `opt_in_out
    --opt_out`): nothing is sent on a beit-flax user's behalf, and no process is forked beside JAX's threads. Its
    own check declines in CI, so the import runs with CI=true."""
    import sys

    if "openvino" not in sys.modules:
        before = os.environ.get("CI")
        os.environ["CI"] = "true"
        try:
            import openvino  # noqa: F401
        finally:
            if before is None:
                del os.environ["CI"]
            else:
                os.environ["CI"] = before
    return sys.modules["openvino"]


def open_session(runtime: str, path: Path, dtype: str = "float32") -> Callable[[np.ndarray], np.ndarray]:
    """`images (B, H, W, 3) float32 -> depth (B, H, W) float32` through `runtime` on the CPU, computing in `dtype`
    (one of `DTYPES[runtime]`)."""
    if runtime == "onnxruntime":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return lambda images: session.run(["depth"], {"images": images})[0]
    if runtime == "openvino":
        openvino = import_openvino()
        # told either way: OpenVINO's CPU plugin infers in bfloat16 where the CPU has it (AMX, AVX-512 BF16)
        precision = {"float32": "f32", "bfloat16": "bf16"}[dtype]
        compiled = openvino.Core().compile_model(
            str(path), "CPU", {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY"}
        )
        output = compiled.output(0)
        return lambda images: np.asarray(compiled(images)[output])
    raise ValueError(f"runtime must be one of {RUNTIMES[1:]}, got {runtime!r}")


def check_runtime(runtime: str, dtype: Any = "float32") -> None:
    """ValueError with one line when `runtime` is unknown, not installed, or given a 16-bit model."""
    import importlib.util

    if runtime not in RUNTIMES:
        raise ValueError(f"--runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    missing = [
        m for m in ("jax2onnx", "onnx", "onnxscript", *NEEDS.get(runtime, ())) if not importlib.util.find_spec(m)
    ]
    if runtime != "jax" and missing:
        raise ValueError(f"--runtime {runtime} needs {', '.join(missing)}: pip install 'beit-flax[onnx]'")
    offered = DTYPES.get(runtime)
    if offered is not None and str(check_dtype(dtype)) not in offered:
        raise ValueError(f"--runtime {runtime} computes in {' or '.join(offered)} only, not {check_dtype(dtype)}")


class RuntimeBatcher(Batcher):
    """A `Batcher` (same `run`, grouping and order) whose batches run in onnxruntime or OpenVINO on the CPU, one
    session per network input size (the `KEPT_SESSIONS` most recent kept), each from the cached `artifact`.

    batch_size: images per call (default 1: the runtimes spread one image over every core). folder: the weights
    cache (default `hub.cache.weights_dir()`). announce: told when an artifact is exported (it takes a while).
    The model's compute dtype is the runtime's (`DTYPES`); the artifact is exported from its float32 twin.
    """

    def __init__(
        self,
        model: nn.Module,
        params: Any,
        runtime: str,
        batch_size: int | None = None,
        *,
        folder: str | os.PathLike | None = None,
        announce: Callable[[str], None] | None = None,
    ) -> None:
        check_runtime(runtime, model.dtype)
        if runtime == "jax":
            raise ValueError("RuntimeBatcher runs onnxruntime or openvino; Batcher runs jax")
        self.dtype = str(check_dtype(model.dtype))
        if self.dtype != "float32":
            model = dataclasses.replace(model, dtype="float32")
        self.model, self.config, self.params = model, model.config, params
        self.runtime, self.folder, self.announce = runtime, folder, announce
        self.device_count = 1
        self.batch_size = 1 if batch_size is None else check_batch_size(batch_size)
        self.batch_plan = tuple((k, 1) for k in range(1, self.batch_size + 1))  # any size: no padding
        self.shapes: set[tuple[int, ...]] = set()
        self.sessions: collections.OrderedDict[tuple[int, int], Any] = collections.OrderedDict()

    def session(self, size_hw: tuple[int, int]) -> Callable[[np.ndarray], np.ndarray]:
        """The session for (H', W') inputs: kept, or opened from the artifact (exported first if need be). A size
        that failed to export fails again at once, without another export."""
        if size_hw in self.sessions:
            self.sessions.move_to_end(size_hw)
        else:
            while len(self.sessions) >= KEPT_SESSIONS:
                self.sessions.popitem(last=False)
            try:
                path = artifact(self.model, self.params, size_hw, self.folder, self.announce)
                self.sessions[size_hw] = open_session(self.runtime, path, self.dtype)
            except Exception as err:  # an export or load failure belongs to this size
                self.sessions[size_hw] = err
        found = self.sessions[size_hw]
        if isinstance(found, Exception):
            raise found
        return found

    def _launch(self, bucket: list[tuple[Any, np.ndarray]], on_error) -> tuple[list[Any], Any]:
        metas, arrays = zip(*bucket)
        batch = np.stack(arrays).astype(np.float32, copy=False)
        self.shapes.add(batch.shape)
        try:
            return list(metas), self.session(batch.shape[1:3])(batch)
        except Exception as err:
            if on_error is None:
                raise
            return list(metas), err
