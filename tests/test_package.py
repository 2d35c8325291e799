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
