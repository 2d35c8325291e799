"""Shared by test_sharding.py and tests/multidevice: a tiny random-weight model as a beit-flax weights file (no
torch), and the environment that gives a subprocess N CPU devices."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from flax import traverse_util

from beit_flax import save
from beit_flax.params import param_shapes
from tiny_config import TINY

ROOT = Path(__file__).resolve().parents[1]
MULTIDEVICE_ENV = "BEIT_FLAX_MULTIDEVICE"  # set: tests/multidevice is collected (see its conftest.py)


def tiny_weights(path: Path, seed: int = 0) -> Path:
    """Random params of the shapes TINY needs (LayerNorm scales near 1), saved with beit_flax.save."""
    rng = np.random.default_rng(seed)
    flat = {
        name: (1.0 + 0.1 * rng.standard_normal(shape) if name.endswith("scale") else 0.1 * rng.standard_normal(shape))
        for name, shape in sorted(param_shapes(TINY).items())
    }
    flat["head/conv3/bias"] = np.ones(1)  # the head ends in a ReLU: keep random depth maps above 0
    save(path, TINY, traverse_util.unflatten_dict(flat, sep="/"))
    return path


def forced_devices_env(count: int, **extra: str) -> dict[str, str]:
    """os.environ for a subprocess with `count` CPU devices (XLA_FLAGS), no persistent cache, tests importable."""
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f]
    python_path = [str(ROOT / "tests"), str(ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {
        **os.environ,
        "XLA_FLAGS": " ".join([*flags, f"--xla_force_host_platform_device_count={count}"]),
        "JAX_PLATFORMS": "cpu",
        "BEIT_FLAX_CACHE_DIR": "off",
        "PYTHONPATH": os.pathsep.join(python_path),
        **extra,
    }


def picture(height: int, width: int, seed: int) -> np.ndarray:
    """A smooth random (H, W, 3) uint8 image."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    smooth = np.stack([np.sin(5 * y + seed), np.cos(4 * x - seed), np.sin(3 * (x + y))], -1)
    return (np.clip(0.5 + 0.3 * smooth + 0.1 * rng.standard_normal((height, width, 3)), 0, 1) * 255).astype(np.uint8)
