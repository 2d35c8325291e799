"""The console scripts (`beit-depth`, `convert_weights`, `export_weights`, `beit-demo`): Ctrl-C and SIGTERM are
handled (`interrupts`) before the command's module, and with it jax, is imported, so that a signal at any point,
imports included, ends the command with one line and 130 / 143. Standard library only, like `beit_flax/__init__.py`.
"""

from __future__ import annotations

import importlib

from beit_flax.interrupts import interruptible


def _run(prog: str, target: str) -> int:
    """`module:function` imported and called, both inside `interruptible`."""
    module, function = target.split(":")
    return interruptible(prog, lambda: getattr(importlib.import_module(module), function)(), exiting=True)


def beit_depth() -> int:
    return _run("beit-depth", "beit_flax.cli:main")


def convert_weights() -> int:
    return _run("convert_weights", "beit_flax.convert.cli:main")


def export_weights() -> int:
    return _run("export_weights", "beit_flax.convert.cli:export_main")


def beit_demo() -> int:
    return _run("beit-demo", "beit_flax.demo.cli:main")
