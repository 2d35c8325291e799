"""JAX's persistent compilation cache for beit-flax: a second process loads compiled programs instead of compiling.

The directory: an explicit path, else $BEIT_FLAX_CACHE_DIR, else JAX's own setting ($JAX_COMPILATION_CACHE_DIR),
else ~/.cache/beit-flax/jax ($XDG_CACHE_HOME respected). BEIT_FLAX_CACHE_DIR=off disables it.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax

CACHE_ENV = "BEIT_FLAX_CACHE_DIR"  # a directory, or "off" to leave JAX's persistent cache alone
_OFF = {"", "0", "off", "none", "false", "no"}


def enable_compilation_cache(path: str | os.PathLike | None = None) -> Path | None:
    """Turn on JAX's persistent compilation cache, so a second process loads compiled programs instead of compiling.

    Directory: `path`, else $BEIT_FLAX_CACHE_DIR, else JAX's own setting ($JAX_COMPILATION_CACHE_DIR), else
    ~/.cache/beit-flax/jax ($XDG_CACHE_HOME respected). BEIT_FLAX_CACHE_DIR=off disables it. Every compile is
    cached (CPU compiles are short but still seconds). Returns the directory in use, or None.
    """
    env = os.environ.get(CACHE_ENV)
    if path is None and env is not None and env.strip().lower() in _OFF:
        return None
    current = jax.config.jax_compilation_cache_dir
    if path is None and env is None and current:
        chosen = Path(current)
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        chosen = Path(path or env or base / "beit-flax" / "jax").expanduser()
    try:
        chosen.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None  # a read-only home must not stop inference; it only costs the compile
    jax.config.update("jax_compilation_cache_dir", str(chosen))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return chosen
