"""`beit-demo`, the README's second command, as a user runs it: the console script in a fresh folder, end to end
(a perturbed transformers BEiT-B 384 -> convert_weights -> the jitted model on assets/scene.jpg -> parity vs torch)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


@pytest.mark.full_size
def test_the_demo_runs_as_the_readme_says(tmp_path):
    script = Path(sys.executable).with_name("beit-demo")  # the console script pip installed beside this python
    assert script.is_file(), f"{script}: pip install -e . installs it"
    done = subprocess.run([str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.strip().splitlines()
    print("\n" + "\n".join(lines))
    assert [line[:5] for line in lines[:4]] == ["[1/4]", "[2/4]", "[3/4]", "[4/4]"], lines
    result = json.loads(lines[-1])
    assert result["variant"] == "dpt_beit_base_384" and result["parity_max_rel"] <= 1e-4
    reference_max = float(lines[3].rsplit("max|torch| = ", 1)[1].rstrip(")"))
    assert reference_max > 1e-2, "a near-zero reference proves nothing"
    depth = np.load(tmp_path / "demo_out" / "depth.npy")
    assert depth.shape == (480, 640) and np.isfinite(depth).all() and np.ptp(depth) > 0  # scene.jpg's own size
    with Image.open(tmp_path / "demo_out" / "depth.png") as png:
        assert png.size == (640, 480)
