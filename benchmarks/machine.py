"""What every benchmark says about the machine it ran on (imports nothing heavy: memory.py measures torch processes
that must not load jax)."""

from __future__ import annotations

import platform
from pathlib import Path


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo, else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def isa_flags() -> list[str]:
    """The CPU's vector ISA flags from /proc/cpuinfo (AVX, AVX-512, AMX, FMA, SSE4 families; with AVX-512 BF16 /
    AMX, PyTorch's and OpenVINO's bfloat16 kernels apply), sorted; [] where /proc/cpuinfo is not there."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return sorted(f for f in line.split(":", 1)[1].split() if f.startswith(("avx", "amx", "sse4", "fma")))
    except OSError:
        pass
    return []
