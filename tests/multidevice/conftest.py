"""Collected only with $BEIT_FLAX_MULTIDEVICE set: tests/test_sharding.py runs this folder in a subprocess with
8 forced CPU devices (XLA_FLAGS must be set before JAX starts, so it cannot happen inside the main pytest process).
By hand: BEIT_FLAX_MULTIDEVICE=1 XLA_FLAGS=--xla_force_host_platform_device_count=8 pytest tests/multidevice
(or on any machine with 8 or more local devices, without XLA_FLAGS)."""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: sharding_helpers

collect_ignore_glob = [] if os.environ.get("BEIT_FLAX_MULTIDEVICE") else ["*"]
