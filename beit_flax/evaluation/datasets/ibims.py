"""iBims-1 (Koch et al., "Evaluation of CNN-based Single-Image Depth Estimation Methods", ECCV workshops 2018), the
core set as shipped in `ibims1_core_raw` (`imagelist.txt`; `rgb/<name>.png`; `depth/<name>.png`, a 16-bit PNG with
depth in meters = value / 65535 * 50; `mask_invalid/<name>.png` and `mask_transp/<name>.png`, nonzero = usable),
read as ZoeDepth's `zoedepth/data/ibims.py` does: a pixel counts where both masks are set. ROOT is the
`ibims1_core_raw` folder. Keys are `rgb/<name>`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from beit_flax.evaluation.datasets.files import DatasetError, Item, read_mask_png, read_png16, read_rgb, sample
from beit_flax.files import InputError, read_input

DEPTH_SCALE_M = 50.0 / 65535.0


def core(root: Path) -> list[Item]:
    """The images named in `imagelist.txt`, in its order."""
    listing = root / "imagelist.txt"
    try:
        names = read_input(listing, 1 << 20, "image list").decode("utf-8").split()
    except (InputError, UnicodeDecodeError) as err:
        raise DatasetError(f"{root}: no iBims-1 imagelist.txt ({err})") from None
    return [_image(root, name) for name in names]


def _image(root: Path, name: str) -> Item:
    def load():
        image = read_rgb(root / "rgb" / f"{name}.png")
        depth = read_png16(root / "depth" / f"{name}.png").astype(np.float64) * DEPTH_SCALE_M
        usable = read_mask_png(root / "mask_invalid" / f"{name}.png") & read_mask_png(
            root / "mask_transp" / f"{name}.png"
        )
        return sample(image, depth, usable, root / "depth" / f"{name}.png")

    return Item(f"rgb/{name}", load)
