"""What every dataset reader shares: a sample, an item (a key and how to load it), and bounded readers for the
shipped file formats (16-bit PNG, 8-bit mask PNG, .npy, raw float32), each raising `DatasetError` naming the file."""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from beit_flax.files import InputError, read_input
from beit_flax.images import ImageError, read_image

MAX_DEPTH_FILE_BYTES = 1 << 30  # the largest shipped ground-truth file is ETH3D's 6048 x 4032 float32, 97.5 MB


class DatasetError(ValueError):
    """A dataset folder or one of its files that cannot be read as the dataset ships it; the message names it."""


@dataclasses.dataclass(frozen=True)
class Sample:
    """One evaluation sample: image (H, W, 3) uint8 RGB; depth (H, W) float32 meters of the ground truth; valid
    (H, W) bool, the pixels the dataset says it measured (depth > 0 and finite, and its own masks)."""

    image: np.ndarray
    depth: np.ndarray
    valid: np.ndarray


@dataclasses.dataclass(frozen=True)
class Item:
    """A sample not yet read: `key` names it (the image's path under the dataset root without its suffix, the
    name `--predictions DIR/<key>.npy` mirrors), `load()` reads it (DatasetError when a file is bad)."""

    key: str
    load: Callable[[], Sample]


def sample(image: np.ndarray, depth: np.ndarray, valid: np.ndarray, where: Path | str) -> Sample:
    """A Sample after checking that image, depth and mask have one size; the validity keeps only positive, finite
    depth."""
    depth = np.asarray(depth, np.float32)
    if image.ndim != 3 or image.dtype != np.uint8:
        raise DatasetError(f"{where}: the image is not 8-bit RGB (shape {image.shape}, {image.dtype})")
    if depth.ndim != 2 or depth.shape != image.shape[:2] or np.shape(valid) != depth.shape:
        raise DatasetError(
            f"{where}: image {image.shape[:2]}, depth {depth.shape} and mask {np.shape(valid)} differ in size"
        )
    with np.errstate(invalid="ignore"):
        valid = np.asarray(valid, bool) & np.isfinite(depth) & (depth > 0)
    return Sample(image, depth, valid)


def read_rgb(path: Path) -> np.ndarray:
    """An image file -> (H, W, 3) uint8 RGB (`images.read_image`, EXIF applied)."""
    try:
        image = read_image(path)
    except ImageError as err:
        raise DatasetError(str(err)) from None
    if image.dtype != np.uint8:
        raise DatasetError(f"{path}: a 16-bit image where the dataset ships 8-bit RGB")
    return image


def read_bytes(path: Path, max_bytes: int = MAX_DEPTH_FILE_BYTES) -> bytes:
    try:
        return read_input(path, max_bytes, "ground-truth file")
    except InputError as err:
        raise DatasetError(str(err)) from None


def _png(path: Path) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(read_bytes(path)))
        image.load()
    except DatasetError:
        raise
    except Exception as err:  # Pillow raises many kinds for a corrupt file
        raise DatasetError(f"{path}: not a PNG Pillow can read ({type(err).__name__}: {err})") from None
    return image


def read_png16(path: Path) -> np.ndarray:
    """A 16-bit grayscale PNG -> (H, W) uint16, as shipped (no scaling). DatasetError for an 8-bit or colour PNG:
    depth stored in 8 bits would be read as a wrong scale without a word."""
    image = _png(path)
    if image.mode not in ("I;16", "I;16B", "I;16L", "I"):
        raise DatasetError(f"{path}: a {image.mode} image, not the 16-bit grayscale PNG the dataset ships")
    values = np.asarray(image)
    if values.min(initial=0) < 0 or values.max(initial=0) > 65535:
        raise DatasetError(f"{path}: values outside 0..65535, not a 16-bit PNG")
    return values.astype(np.uint16)


def read_mask_png(path: Path) -> np.ndarray:
    """A mask PNG (1-bit, 8-bit or 16-bit grayscale) -> (H, W) bool, nonzero = set."""
    image = _png(path)
    if image.mode not in ("1", "L", "P", "I;16", "I;16B", "I;16L", "I"):
        raise DatasetError(f"{path}: a {image.mode} image, not a grayscale mask")
    return np.asarray(image) != 0


def read_npy(path: Path) -> np.ndarray:
    """A .npy file -> its numeric array (no pickles)."""
    try:
        array = np.load(io.BytesIO(read_bytes(path)), allow_pickle=False)
    except DatasetError:
        raise
    except Exception as err:
        raise DatasetError(f"{path}: not a .npy array file ({type(err).__name__}: {err})") from None
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == bool) or np.iscomplexobj(array):
        raise DatasetError(f"{path}: a {array.dtype} array, not a real numeric one")
    return array


def squeeze_2d(array: np.ndarray, path: Path) -> np.ndarray:
    """(H, W), (H, W, 1) or (1, H, W) -> (H, W); DatasetError otherwise."""
    if array.ndim == 3 and 1 in (array.shape[0], array.shape[-1]):
        array = array[0] if array.shape[0] == 1 else array[..., 0]
    if array.ndim != 2 or min(array.shape) < 1:
        raise DatasetError(f"{path}: an array of shape {array.shape}, not an (H, W) map")
    return array


def existing(*candidates: Path) -> Path | None:
    """The first of `candidates` that exists."""
    return next((path for path in candidates if path.exists()), None)


def relative_key(path: Path, root: Path) -> str:
    """The key of a file under `root`: its relative path without the suffix, with forward slashes."""
    return path.relative_to(root).with_suffix("").as_posix()


def split_lines(split: Path, option: str = "--split") -> list[list[str]]:
    """A BTS / ZoeDepth file list (`image depth [focal]` per line) -> its lines' fields; blank lines dropped.
    `option`: the command-line option that named the file, for messages."""
    try:
        text = read_input(split, 64 << 20, "split file").decode("utf-8")
    except (InputError, UnicodeDecodeError) as err:
        raise DatasetError(f"{option} {split}: {err}") from None
    return [line.split() for line in text.splitlines() if line.strip()]
