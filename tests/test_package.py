"""The package as a whole: importing it never imports torch, transformers, imageio or OpenCV."""

from __future__ import annotations

import subprocess
import sys


def test_import_never_imports_torch():
    code = (
        "import sys, beit_flax, beit_flax.cli, beit_flax.images, beit_flax.pipeline\n"
        "assert callable(beit_flax.predict) and callable(beit_flax.preprocess) and callable(beit_flax.postprocess)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'imageio', 'cv2'))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_demo_finds_its_image():
    """`beit-demo` (one of the two commands) reads assets/scene.jpg from the repository by default."""
    from beit_flax.demo.cli import DEFAULT_IMAGE

    assert DEFAULT_IMAGE.is_file(), DEFAULT_IMAGE


def test_every_module_imports_first():
    """Each module of the package imports as the first one (the console scripts import one module, not the package's
    names): an import cycle that an earlier import happened to hide shows here. One process: between modules, only
    beit_flax's are dropped from sys.modules."""
    code = (
        "import importlib, pkgutil, sys, beit_flax\n"
        "modules = pkgutil.walk_packages(beit_flax.__path__, 'beit_flax.')\n"
        "names = [m.name for m in modules if not m.name.endswith('__main__')]  # those run a command\n"
        "failed = []\n"
        "for name in names:\n"
        "    for loaded in [m for m in sys.modules if m.split('.')[0] == 'beit_flax']:\n"
        "        del sys.modules[loaded]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception as err:\n"
        "        failed.append(f'{name}: {type(err).__name__}: {err}')\n"
        "assert len(names) > 90 and not failed, failed\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)
