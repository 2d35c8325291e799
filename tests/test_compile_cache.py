"""compile_cache.py: the persistent compilation cache directory and its off switch."""

from __future__ import annotations

from beit_flax.compile_cache import enable_compilation_cache


def test_compilation_cache_dir(monkeypatch, tmp_path):
    import jax

    before = jax.config.jax_compilation_cache_dir
    try:
        monkeypatch.setenv("BEIT_FLAX_CACHE_DIR", "off")
        assert enable_compilation_cache() is None
        monkeypatch.setenv("BEIT_FLAX_CACHE_DIR", str(tmp_path / "cache"))
        assert enable_compilation_cache() == tmp_path / "cache" and (tmp_path / "cache").is_dir()
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "cache")
        assert jax.config.jax_persistent_cache_min_compile_time_secs == 0
    finally:
        jax.config.update("jax_compilation_cache_dir", before)
