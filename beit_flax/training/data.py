"""Training data: procedural scenes with exact depth, and a loader for folders of images and depth maps.

Both give batches in the form `steps.train_step` takes (numpy, on the host; `check_batch` checks one):

    {"image": (B, S, S, 3) float32 normalised as (x - 0.5) / 0.5,       # like `transforms.preprocess`
     "inverse_depth": (B, S, S) float32, 1 / depth where valid scaled to median 1 per image, 0 elsewhere,
     "mask": (B, S, S) bool, valid ground truth}

Batches for a loss on depth itself (`target="depth"`, the "silog" loss of metric models) hold "depth": (B, S, S)
float32 meters where valid, 0 elsewhere, unscaled, instead of "inverse_depth".

`batch_indices(n, batch_size, step, seed)` picks the items of a step as a pure function of the step (a fresh
permutation each epoch), so a resumed run sees exactly the batches an uninterrupted one would.

User data (`DepthFolder`), paired by file stem:

    DIR/images/NAME.{jpg,png,...}    RGB (any format `images.read_image` reads)
    DIR/depth/NAME.{png,npy}         depth: 16-bit (or 8-bit) PNG, or a float (H, W) .npy; 0, negative, NaN or inf
                                     = no ground truth. Units do not matter: `make_batch` scales each image's
                                     inverse depth to median 1.
    DIR/masks/NAME.{png,npy}         optional: nonzero = valid (combined with the depth's own validity)

`inverse=True` reads the depth files as inverse depth / disparity instead (e.g. MiDaS outputs, stereo disparity).
Each sample is resized (shorter side to S; bicubic for RGB, nearest for depth and mask so no depth is blended
across edges or with invalid pixels) and centre-cropped to S x S.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from beit_flax.images import IMAGE_EXTENSIONS, read_image
from beit_flax.training.scenes import render_scene
from beit_flax.transforms import resize_bicubic

Batch = Mapping[str, Any]
"""{"image", "inverse_depth", "mask"} -> arrays (numpy on the host, or jax arrays); see `check_batch`."""
DEPTH_EXTENSIONS = (".png", ".npy")


def make_batch(images: np.ndarray, depth: np.ndarray, mask: np.ndarray, *, target: str = "inverse_depth") -> Batch:
    """uint8 images (B, H, W, 3), depth (B, H, W), mask (B, H, W) -> a train-step batch (see the module doc) whose
    target is `target`, the loss's (`state.LOSS_TARGETS`): "inverse_depth" (per-image median 1) or "depth" (as it
    is, meters)."""
    if target not in ("inverse_depth", "depth"):
        raise ValueError(f"target must be 'inverse_depth' or 'depth', got {target!r}")
    images, depth, mask = np.asarray(images), np.asarray(depth, np.float32), np.asarray(mask, bool)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"images must be (B, H, W, 3) uint8; got {images.shape} {images.dtype}")
    if depth.shape != images.shape[:3] or mask.shape != images.shape[:3]:
        raise ValueError(f"depth {depth.shape} and mask {mask.shape} must be {images.shape[:3]}")
    with np.errstate(divide="ignore", invalid="ignore"):
        valid = mask & np.isfinite(depth) & (depth > 0)
        inverse = np.where(valid, 1.0 / np.where(valid, depth, 1.0), 0.0)
    if target == "depth":
        depth = np.where(valid, depth, 0.0).astype(np.float32)
        return {"image": (images.astype(np.float32) / 255.0 - 0.5) / 0.5, "depth": depth, "mask": valid}
    # Per-image median 1: the loss is invariant to the prediction's scale but not the target's, whose scale sets the
    # balance of the (quadratic) data term and the (linear) gradient term; this makes it independent of units.
    medians = np.array([np.median(d[v]) if v.any() else 1.0 for d, v in zip(inverse, valid)])
    inverse = (inverse / medians[:, None, None]).astype(np.float32)
    return {"image": (images.astype(np.float32) / 255.0 - 0.5) / 0.5, "inverse_depth": inverse, "mask": valid}


def check_batch(batch: Batch, input_multiple: int, target: str = "inverse_depth") -> None:
    """Raise ValueError unless `batch` is {"image": (B, H, W, 3) float normalised as (x - 0.5) / 0.5,
    "inverse_depth": (B, H, W) float, "mask": (B, H, W) bool or 0/1} with H and W multiples of `input_multiple` (the
    model's, `TrainState.input_multiple`). `target`: "depth" for metric batches. Shapes only, so it also runs at trace
    time inside jit."""
    missing = {"image", target, "mask"} - set(batch)
    if missing:
        raise ValueError(f"batch is missing {sorted(missing)}; it has {sorted(batch)}")
    image, target_shape, mask = (np.shape(batch[k]) for k in ("image", target, "mask"))
    if len(image) != 4 or image[-1] != 3 or target_shape != image[:3] or mask != image[:3]:
        raise ValueError(
            f"batch shapes: image {image} must be (B, H, W, 3), {target} {target_shape} and mask {mask} (B, H, W)"
        )
    if image[1] % input_multiple or image[2] % input_multiple:
        raise ValueError(f"image size {image[1:3]} is not a multiple of {input_multiple}, the model's input multiple")


def batch_indices(num_items: int, batch_size: int, step: int, seed: int = 0) -> np.ndarray:
    """Indices (batch_size,) of step `step`: consecutive slices of one permutation per epoch (seeded by (seed,
    epoch)), wrapping into the next epoch. A pure function of its arguments."""
    if num_items < 1 or batch_size < 1 or step < 0:
        raise ValueError(f"need num_items >= 1, batch_size >= 1, step >= 0; got {num_items}, {batch_size}, {step}")
    positions = np.arange(step * batch_size, (step + 1) * batch_size)
    epochs, offsets = np.divmod(positions, num_items)
    perms = {e: np.random.default_rng([seed, e]).permutation(num_items) for e in np.unique(epochs)}
    return np.array([perms[e][o] for e, o in zip(epochs, offsets)])


@dataclasses.dataclass(frozen=True)
class Arrays:
    """An in-memory dataset: images (N, H, W, 3) uint8, depth (N, H, W) float32, mask (N, H, W) bool."""

    images: np.ndarray
    depth: np.ndarray
    mask: np.ndarray

    def __len__(self) -> int:
        return len(self.images)

    def batch(self, indices: Sequence[int], *, target: str = "inverse_depth") -> Batch:
        return make_batch(self.images[indices], self.depth[indices], self.mask[indices], target=target)


def synthetic_scenes(count: int, size: int, seed: int = 0) -> Arrays:
    """`count` rendered scenes at size x size; scene i depends only on (seed, i)."""
    if count < 1 or size < 1:
        raise ValueError(f"need count >= 1 and size >= 1; got {count}, {size}")
    scenes = [render_scene(np.random.default_rng([seed, i]), size, size) for i in range(count)]
    images, depth = (np.stack(parts) for parts in zip(*scenes))
    return Arrays(images, depth, np.isfinite(depth) & (depth > 0))


# --- user data ---------------------------------------------------------------------------------------------------


def _nearest(array: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of (H, W) at pixel centres."""
    rows = np.minimum(((np.arange(size_hw[0]) + 0.5) * array.shape[0] / size_hw[0]).astype(int), array.shape[0] - 1)
    cols = np.minimum(((np.arange(size_hw[1]) + 0.5) * array.shape[1] / size_hw[1]).astype(int), array.shape[1] - 1)
    return array[rows[:, None], cols[None, :]]


def resize_to_cover(
    image: np.ndarray, depth: np.ndarray, valid: np.ndarray, size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(H, W, 3) uint8, (H, W) depth, (H, W) bool -> the three resized so that the shorter side is `size` (both sides
    at least `size`): bicubic for the image, nearest for depth and mask, so that no depth is blended across edges or
    with invalid pixels."""
    height, width = depth.shape
    scale = size / min(height, width)
    resized = (max(size, round(height * scale)), max(size, round(width * scale)))
    image = np.clip(np.round(resize_bicubic(image, resized)), 0, 255).astype(np.uint8)
    return image, _nearest(depth, resized), _nearest(valid, resized)


def _read_map(path: Path) -> np.ndarray:
    """A depth or mask file -> (H, W) float32: .npy as stored, an image's first channel (16 bits kept)."""
    if path.suffix.lower() == ".npy":
        array = np.load(path, allow_pickle=False)
        array = array[..., 0] if array.ndim == 3 and array.shape[-1] == 1 else array
        if array.ndim != 2 or not np.issubdtype(array.dtype, np.number):
            raise ValueError(f"{path}: expected an (H, W) numeric array, got {array.shape} {array.dtype}")
        return array.astype(np.float32)
    return read_image(path)[..., 0].astype(np.float32)


class DepthFolder:
    """Images + depth maps (+ masks) from a folder; see the module doc for the layout. Reads lazily per batch."""

    def __init__(self, root: str | os.PathLike, size: int, *, inverse: bool = False) -> None:
        self.root, self.size, self.inverse = Path(root), size, inverse
        if size < 16 or size % 16:
            raise ValueError(f"size must be a positive multiple of 16, got {size}")
        images_dir, depth_dir, masks_dir = (self.root / name for name in ("images", "depth", "masks"))
        if not images_dir.is_dir() or not depth_dir.is_dir():
            raise FileNotFoundError(f"{self.root}: needs images/ and depth/ folders (masks/ optional)")
        by_stem = lambda folder, exts: {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in exts}
        images = by_stem(images_dir, IMAGE_EXTENSIONS)
        depth = by_stem(depth_dir, DEPTH_EXTENSIONS)
        masks = by_stem(masks_dir, IMAGE_EXTENSIONS | {".npy"}) if masks_dir.is_dir() else {}
        missing = sorted(images.keys() - depth.keys())
        if missing:
            raise FileNotFoundError(f"{depth_dir}: no depth map for {len(missing)} images, e.g. {missing[:5]}")
        if not images:
            raise FileNotFoundError(f"{images_dir}: no images")
        self.items = [(images[k], depth[k], masks.get(k)) for k in sorted(images)]

    def __len__(self) -> int:
        return len(self.items)

    def sample(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(S, S, 3) uint8 image, (S, S) float32 depth (inf where invalid), (S, S) bool mask."""
        image_path, depth_path, mask_path = self.items[index]
        image, depth = read_image(image_path), _read_map(depth_path)
        if image.dtype != np.uint8:  # 16-bit grayscale photo
            image = (image >> 8).astype(np.uint8)
        if depth.shape != image.shape[:2]:
            raise ValueError(f"{depth_path}: depth {depth.shape} does not match image {image.shape[:2]}")
        valid = np.isfinite(depth) & (depth > 0)
        if mask_path is not None:
            mask = _read_map(mask_path)
            if mask.shape != depth.shape:
                raise ValueError(f"{mask_path}: mask {mask.shape} does not match image {image.shape[:2]}")
            valid &= mask > 0
        with np.errstate(divide="ignore"):
            depth = np.where(valid, 1.0 / np.where(valid, depth, 1.0) if self.inverse else depth, np.inf)
        image, depth, valid = resize_to_cover(image, depth, valid, self.size)
        top, left = (depth.shape[0] - self.size) // 2, (depth.shape[1] - self.size) // 2
        crop = lambda a: a[top : top + self.size, left : left + self.size]
        return crop(image), crop(depth).astype(np.float32), crop(valid)

    def batch(self, indices: Sequence[int], *, target: str = "inverse_depth") -> Batch:
        images, depth, mask = (np.stack(parts) for parts in zip(*(self.sample(int(i)) for i in indices)))
        return make_batch(images, depth, mask, target=target)

    def to_arrays(self) -> Arrays:
        """Everything in memory (small datasets: decoding once instead of every epoch)."""
        images, depth, mask = (np.stack(parts) for parts in zip(*(self.sample(i) for i in range(len(self)))))
        return Arrays(images, depth, mask)
