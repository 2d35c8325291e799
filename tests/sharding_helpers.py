"""Shared by test_sharding.py and tests/multidevice: a tiny random-weight model as a beit-flax weights file (no
torch), and the environment that gives a subprocess N CPU devices."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from tiny_config import TINY

from beit_flax import save
from beit_flax.params import init_params

ROOT = Path(__file__).resolve().parents[1]
MULTIDEVICE_ENV = "BEIT_FLAX_MULTIDEVICE"  # set: tests/multidevice is collected (see its conftest.py)


def tiny_weights(path: Path, seed: int = 0) -> Path:
    """Random TINY params (every leaf spread, the head's last bias near 1), saved with beit_flax.save."""
    save(path, TINY, init_params(TINY, seed, spread=0.1))
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
