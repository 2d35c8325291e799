"""Shared by test_transforms / test_predict / test_cli: MiDaS' resize rule, the run.py pipeline in torch, the tiny
torch reference as a beit-flax weights file, and real-looking test images.

`midas_size` and `torch_run_py` are written from MiDaS' `midas/transforms.py` (Resize, "minimal") and `run.py`
(`read_image`, `process`), with torch's bicubic standing in for OpenCV's INTER_CUBIC (the same kernel; see
test_transforms.py, which also checks against cv2 where it is installed).
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torch_reference as ref
from PIL import Image, ImageOps

from beit_flax import save
from beit_flax.convert import open_checkpoint, torch_to_flax

TINY_NET = 64  # the converter's net size for TINY: 16 x its 4 x 4 training grid


# --- MiDaS midas/transforms.py Resize (keep_aspect_ratio, ensure_multiple_of=32, resize_method="minimal") -----------


def constrain_to_multiple_of(x: float, multiple_of: int = 32, min_val: int = 0, max_val: int | None = None) -> int:
    y = (np.round(x / multiple_of) * multiple_of).astype(int)
    if max_val is not None and y > max_val:
        y = (np.floor(x / multiple_of) * multiple_of).astype(int)
    if y < min_val:
        y = (np.ceil(x / multiple_of) * multiple_of).astype(int)
    return int(y)


def midas_size(height: int, width: int, net: int, square: bool = False) -> tuple[int, int]:
    """MiDaS Resize.get_size(width, height) for run.py's BEiT settings, returned as (H', W')."""
    scale_height = net / height
    scale_width = net / width
    if not square:  # keep_aspect_ratio = not square; "minimal": scale as little as possible
        if abs(1 - scale_width) < abs(1 - scale_height):
            scale_height = scale_width  # fit width
        else:
            scale_width = scale_height  # fit height
    return constrain_to_multiple_of(scale_height * height), constrain_to_multiple_of(scale_width * width)


# --- run.py in torch ------------------------------------------------------------------------------------------------


def read_rgb(path: Path) -> np.ndarray:
    """run.py `read_image` -> float64 RGB in [0, 1]; 16-bit grayscale keeps its 16 bits (our documented choice)."""
    with Image.open(path) as image:
        image = ImageOps.exif_transpose(image)
        if image.mode.startswith("I;16"):
            return np.repeat(np.asarray(image, np.float64)[:, :, None], 3, axis=2) / 65535.0
        return np.asarray(image.convert("RGB"), np.float64) / 255.0


def torch_run_py(path: Path, sd_midas: dict, net: int = TINY_NET, square: bool = False) -> np.ndarray:
    """The original pipeline: read, resize (bicubic, float64 like cv2 on img / 255.0), normalise, float32, MiDaS
    forward, bicubic back to the image size -> (H, W) float32."""
    rgb = read_rgb(path)
    height, width = rgb.shape[:2]
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None]
    x = F.interpolate(x, size=midas_size(height, width, net, square), mode="bicubic", align_corners=False)
    x = ((x - 0.5) / 0.5).to(torch.float32)  # NormalizeImage, then PrepareForNet's astype(np.float32)
    prediction = ref.midas_forward(sd_midas, ref.TINY, x)
    ref.assert_nondegenerate(prediction)  # at the network's size: a comparison with an all-zero map proves nothing
    prediction = F.interpolate(prediction.unsqueeze(1), size=(height, width), mode="bicubic", align_corners=False)
    return prediction.squeeze().numpy().reshape(height, width)


# --- the tiny model as files ----------------------------------------------------------------------------------------


@functools.cache
def tiny_files() -> tuple[Path, dict[str, torch.Tensor]]:
    """(beit-flax weights file, MiDaS-layout torch state dict) of the tiny reference; built once per process."""
    folder = Path(tempfile.mkdtemp(prefix="beit-flax-predict-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    model = ref.build_reference(ref.TINY, seed=0)
    sd_midas = ref.to_midas_layout(ref.state_dict_v5(model), ref.TINY)
    torch.save(sd_midas, folder / "midas.pt")
    converted = torch_to_flax(open_checkpoint(folder / "midas.pt"))
    assert converted.config.net_size == TINY_NET
    save(folder / "tiny.msgpack", converted.config, converted.params)
    return folder / "tiny.msgpack", sd_midas


# --- images ---------------------------------------------------------------------------------------------------------


def scene(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A real-looking (H, W, 3) uint8 picture: sky and ground gradients, a few discs and boxes, sensor noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / np.array([max(height - 1, 1), max(width - 1, 1)])[:, None, None]
    horizon = 0.45 + 0.1 * rng.random()
    sky = np.stack([0.4 + 0.3 * y, 0.6 + 0.2 * y, 0.95 - 0.1 * y], -1)
    ground = np.stack([0.35 + 0.3 * y, 0.3 + 0.25 * y, 0.15 + 0.1 * y], -1)
    image = np.where((y < horizon)[..., None], sky, ground)
    for _ in range(4):
        cy, cx, r = rng.random(), rng.random(), 0.05 + 0.2 * rng.random()
        colour = rng.random(3)
        disc = ((y - cy) ** 2 + (x - cx) ** 2) < r**2
        image[disc] = 0.7 * colour + 0.3 * image[disc]
    top, left = rng.random(2) * 0.6
    box = (y > top) & (y < top + 0.3) & (x > left) & (x < left + 0.25)
    image[box] = rng.random(3)
    image += rng.normal(0, 0.02, image.shape)
    return (np.clip(image, 0, 1) * 255).round().astype(np.uint8)


ASSET = Path(__file__).resolve().parents[1] / "assets" / "scene.jpg"


def write_images(folder: Path) -> dict[str, tuple[Path, tuple[int, int]]]:
    """Mixed inputs -> {name: (path, displayed (H, W))}. Network inputs at net 64: (64, 96), (160, 64), (64, 64)."""
    folder.mkdir(parents=True, exist_ok=True)
    files: dict[str, tuple[Path, tuple[int, int]]] = {}

    def put(name: str, image: Image.Image, size: tuple[int, int], **kwargs) -> None:
        image.save(folder / name, **kwargs)
        files[Path(name).stem] = (folder / name, size)

    put("landscape.jpg", Image.fromarray(scene(61, 97, 1)), (61, 97), quality=92)
    put("portrait.png", Image.fromarray(scene(120, 45, 2)), (120, 45))
    gray16 = (scene(64, 100, 3).astype(np.uint32).sum(-1) * 65535 // (3 * 255)).astype(np.uint16)
    put("gray16.png", Image.fromarray(gray16), (64, 100))
    put("gray.jpg", Image.fromarray(scene(90, 140, 4)).convert("L"), (90, 140))
    rgba = np.concatenate([scene(130, 50, 5), np.linspace(0, 255, 130 * 50).reshape(130, 50, 1).astype(np.uint8)], -1)
    put("rgba.png", Image.fromarray(rgba), (130, 50))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display -> displayed (150, 60)
    put("rotated.jpg", Image.fromarray(scene(60, 150, 6)), (150, 60), exif=exif, quality=92)
    put("palette.gif", Image.fromarray(scene(61, 97, 7)).convert("P"), (61, 97))
    put("photo.webp", Image.fromarray(scene(48, 64, 8)), (48, 64), lossless=True)
    put("photo_bmp.bmp", Image.fromarray(scene(100, 150, 9)), (100, 150))
    put("photo_tiff.tif", Image.fromarray(scene(120, 45, 10)), (120, 45))
    put("dot.png", Image.fromarray(np.array([[[200, 30, 90]]], np.uint8)), (1, 1))
    shutil.copy(ASSET, folder / "scene.jpg")
    files["scene"] = (folder / "scene.jpg", (480, 640))
    return files
