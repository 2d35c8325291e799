"""Image files in and out: decoding like MiDaS `utils.read_image`, and depth maps rendered as PNG.

Decoding (`read_image`): Pillow, EXIF orientation applied (OpenCV's `imread` applies it too), alpha dropped without
compositing (as `cv2.IMREAD_COLOR` does), grayscale and palette images expanded to RGB. 16-bit grayscale PNG / TIFF
keep their 16 bits (MiDaS' `imread` would cut them to 8); 16-bit RGB is read as 8-bit by Pillow. Only regular
files are opened, and files above `max_pixels` are refused from their header, before anything is decoded;
`set_pixel_limit` makes Pillow's own guard follow the same limit, so that it is the only one.

Rendering: `colorize` maps min..max of the depth onto a colormap (MiDaS `write_depth` with grayscale=False uses
OpenCV's inferno the same way); `to_png16` is MiDaS' 16-bit grayscale PNG. Colormaps are 33 control points of the
matplotlib tables, linearly interpolated (within 3/255 of the originals).
"""

from __future__ import annotations

import functools
import io
import os
import re
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from beit_flax.files import InputError, check_input
from beit_flax.models.depth_output import RELATIVE, MetricDepth, depth_range

__all__ = ["depth_range"]  # re-exported: the min-max rule of MiDaS' pictures
from beit_flax.transforms import DEFAULT_MAX_PIXELS, megapixels  # the one pixel limit, with the net size's

IMAGE_EXTENSIONS = frozenset(
    {
        ".jpg",
        ".jpeg",
        ".jpe",
        ".jfif",
        ".png",
        ".webp",
        ".bmp",
        ".dib",
        ".tif",
        ".tiff",
        ".gif",
        ".ppm",
        ".pgm",
        ".pbm",
        ".pnm",
    }
)


class ImageError(ValueError):
    """A file that cannot be used as an input image; the message names the file and the reason."""


def set_pixel_limit(max_pixels: int) -> None:
    """Make Pillow's decompression-bomb guard (`PIL.Image.MAX_IMAGE_PIXELS`, refusing above twice its value) agree
    with `max_pixels`, so that a larger limit takes effect: a process-wide setting, which beit-depth makes once for
    --max-pixels. `read_image` checks the image's own size against `max_pixels` either way."""
    Image.MAX_IMAGE_PIXELS = max_pixels


def _over_limit(path: Path, width: int, height: int, max_pixels: int) -> ImageError:
    return ImageError(
        f"{path}: {width}x{height} = {megapixels(width * height)} is over the limit of "
        f"{megapixels(max_pixels)} (raise it with --max-pixels)"
    )


def read_image(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode an image file -> (H, W, 3) uint8 RGB, or uint16 for 16-bit grayscale. Raises ImageError."""
    path = Path(path)
    try:
        size = path.stat().st_size  # a missing file: "cannot read" below
        check_input(path)  # only regular files: a FIFO would block, a device never end
        if size == 0:
            raise ImageError(f"{path}: empty file (0 bytes)")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's DecompressionBombWarning and palette-transparency notes
            # a file object, not the path: Pillow memory-maps raw images (grayscale PGM, BMP, TIFF) it opens by
            # name, and a mapped file truncated while it is decoded is SIGBUS
            with open(path, "rb") as file, Image.open(file) as image:
                width, height = image.size  # from the header: nothing decoded yet
                if width * height > max_pixels:
                    raise _over_limit(path, width, height, max_pixels)
                return to_rgb_array(ImageOps.exif_transpose(image))
    except ImageError:
        raise
    except InputError as err:
        raise ImageError(str(err)) from None
    except Image.DecompressionBombError as err:  # Pillow's guard (twice its limit: set_pixel_limit), a frame or tile
        found = re.search(r"\((\d+) pixels\)", str(err))
        raise ImageError(
            f"{path}: {megapixels(int(found[1])) if found else 'the image'} is over the limit of "
            f"{megapixels(max_pixels)} (raise it with --max-pixels)"
        ) from None
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image Pillow can read") from None
    except (OSError, ValueError, SyntaxError, EOFError) as err:  # truncated / corrupt data, unreadable file
        raise ImageError(f"{path}: cannot read ({type(err).__name__}: {err})") from None


def to_rgb_array(image: Image.Image) -> np.ndarray:
    """A decoded Pillow image -> (H, W, 3) uint8, or uint16 when it holds 16-bit grayscale."""
    if image.mode.startswith("I"):  # "I;16*" (16-bit PNG / TIFF) or "I" (32-bit int, older Pillow's 16-bit PNG)
        gray = np.clip(np.asarray(image), 0, 65535).astype(np.uint16)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if image.mode == "F":  # float TIFF: no agreed range; Pillow's own conversion (clip to 0..255)
        image = image.convert("L")
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def to_png16(depth: np.ndarray) -> np.ndarray:
    """(H, W) depth -> (H, W) uint16 = 65535 * min-max normalised, truncated (MiDaS' grayscale PNG)."""
    return RELATIVE.png16(depth)


def colorize_unit(values: np.ndarray, colormap: str = "inferno") -> np.ndarray:
    """(H, W) values on the colour range [0, 1] (clipped; NaN at 0) -> (H, W, 3) uint8, 1 the bright end."""
    levels = (255 * np.clip(np.nan_to_num(values), 0.0, 1.0)).astype(np.uint8)  # truncation, as MiDaS' np.uint8(out)
    return colormap_lut(colormap)[levels]


def colorize(depth: np.ndarray, colormap: str = "inferno") -> np.ndarray:
    """(H, W) depth -> (H, W, 3) uint8: near (large inverse depth) is the bright end of the colormap."""
    return colorize_unit(depth_range(depth), colormap)


def colorize_metric(depth_m: np.ndarray, max_depth: float, colormap: str = "inferno") -> np.ndarray:
    """(H, W) metric depth in meters -> (H, W, 3) uint8 over the fixed range 0..max_depth (the same colour is the
    same distance in every image and frame): 0 m the bright end, max_depth and beyond the dark end."""
    return colorize_unit(MetricDepth(max_depth).unit(depth_m), colormap)


def encode_png(array: np.ndarray, text: dict[str, str] | None = None) -> bytes:
    """(H, W) uint8 / uint16 or (H, W, 3) uint8 -> PNG bytes (fast compression: these are previews); `text` becomes
    tEXt chunks (PIL: `Image.open(...).text`)."""
    buffer = io.BytesIO()
    info = None
    if text:
        from PIL.PngImagePlugin import PngInfo

        info = PngInfo()
        for key, value in text.items():
            info.add_text(key, value)
    Image.fromarray(array).save(buffer, format="PNG", compress_level=1, pnginfo=info)
    return buffer.getvalue()


def encode_npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


# 33 RGB control points at 0, 1/32, ..., 1 of matplotlib's colormaps, as hex bytes.
_COLORMAP_POINTS = {
    "inferno": (
        "0000040403120b0724150b37210c4a2e0a5a3c09654a0c6b57106d63146e70196e7d1e6d89226a962766a32b61af315c"
        "bb3755c63e4dd14644db4f3be35932eb6528f1711ef67f14f98d0afb9c06fcab0ffbba1ff9ca32f5d949f2e865f3f586"
        "fcffa4"
    ),
    "magma": (
        "0000040303110a0822130d331d114628115a36106a430f7650127c5d177f691c817621818226818f2a819c2e7fa9327d"
        "b63779c33b75cf4170db486ae65163ee5c5ef5695cf9785dfb8761fd9668fea571feb47bfec387fed194fde0a2fceeb0"
        "fcfdbf"
    ),
    "plasma": (
        "0d08872206903105963f049c4c02a15901a56600a77201a87e03a88909a69511a29f1a9ca92396b22c8ebb3587c33e80"
        "cb4778d25071d9596ae06263e66c5ceb7555f07f4ff48a48f89441fb9f3afdab33feb72dfdc328fcd025f9dd25f5eb27"
        "f0f921"
    ),
    "viridis": (
        "440154470d6048186a482374472d7b4536814240863f49893b528b375a8d33638d2f6a8e2c728e297a8e26818e23898e"
        "21908c1f988b1f9f8821a68528ae8031b57b3ebc744cc26c5dc9636ece5882d34c96d83fabdc32c0df24d5e21aeae51a"
        "fde725"
    ),
    "turbo": (
        "30123b392a734040a14456c7466be3467ff64293ff37a7fa29bbec1dcdd818dcc31ee8b031f2994cf97e6bfd648aff4d"
        "a3fd3cb8f735cced34dee037edd03af8c03afdae35fe982cfb8022f56817ec520fe04009d23105c02302ac1701950d01"
        "7a0403"
    ),
}
COLORMAPS = ("inferno", "magma", "plasma", "viridis", "turbo", "gray")


@functools.cache
def colormap_lut(name: str) -> np.ndarray:
    """(256, 3) uint8 lookup table of a colormap in COLORMAPS."""
    if name == "gray":
        return np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1)
    if name not in _COLORMAP_POINTS:
        raise ValueError(f"unknown colormap {name!r}; choose one of {', '.join(COLORMAPS)}")
    points = np.frombuffer(bytes.fromhex("".join(_COLORMAP_POINTS[name])), np.uint8).reshape(-1, 3)
    at = np.linspace(0, 1, len(points))
    lut = np.stack([np.interp(np.linspace(0, 1, 256), at, points[:, c]) for c in range(3)], axis=1)
    return np.round(lut).astype(np.uint8)
