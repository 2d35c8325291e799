"""What a family's depth maps mean, and everything that follows from it: how they are coloured, written as 16-bit
PNG, turned into a 3D z-depth, described, and whether a video's frames can be aligned. Shared by the families, so
that no code outside `models/` needs to know which kind a model gives.

- `RelativeInverseDepth` (MiDaS; Depth Anything's relative models): larger = nearer, an unknown scale and shift
  per map. Coloured by min-max per map (MiDaS `write_depth`); 3D on a stated normalised scale; frames of a video
  are aligned to each other (`up_to_scale`).
- `MetricDepth(top_m)` (ZoeDepth; metric fine-tunes): meters, coloured over the fixed range 0..top_m, near bright
  (the same colour is the same distance in every image and frame); 3D in meters; nothing to align.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

RELATIVE_NEAR_FAR = 10.0
"""Relative depth in 3D: the farthest pixel's normalised z over the nearest's (which is 1). Relative inverse depth
says nothing about the true ratio; 10 shows the relief of indoor and street scenes without flattening the foreground
or stretching the background into a long tunnel."""


def depth_range(depth: np.ndarray) -> np.ndarray:
    """(H, W) depth -> (H, W) float32 in [0, 1] by min-max; a constant map gives zeros (MiDaS `write_depth`)."""
    depth = np.nan_to_num(np.asarray(depth, dtype=np.float64))
    lo, hi = depth.min(), depth.max()
    if hi - lo <= np.finfo(np.float64).eps:
        return np.zeros(depth.shape, np.float32)
    return ((depth - lo) / (hi - lo)).astype(np.float32)


def _checked_2d(depth: np.ndarray) -> np.ndarray:
    depth = np.asarray(depth)
    if depth.ndim != 2:
        raise ValueError(f"depth must be (H, W), got shape {depth.shape}")
    return depth


@dataclasses.dataclass(frozen=True)
class RelativeInverseDepth:
    """Relative inverse depth: larger = nearer, up to an unknown scale and shift (see the module doc)."""

    units: str = "relative inverse depth (larger = nearer)"
    up_to_scale: bool = True  # maps of one scene differ by a scale and shift: a video's frames can be aligned

    def unit(self, depth: np.ndarray) -> np.ndarray:
        """(H, W) -> (H, W) float32 colour positions in [0, 1], 1 the near (bright) end: min-max of this map."""
        return depth_range(depth)

    def png16(self, depth: np.ndarray) -> np.ndarray:
        """(H, W) -> uint16 = 65535 * min-max normalised, truncated (MiDaS' grayscale PNG)."""
        return (65535 * depth_range(depth).astype(np.float64)).astype(np.uint16)

    def png_text(self) -> dict[str, str] | None:
        return None  # min-max per image: nothing to state

    def range_text(self) -> str | None:
        """The colour range as the summary lines state it; None: per image."""
        return None

    def z(self, depth: np.ndarray) -> np.ndarray:
        """(H, W) float32 z-depth on the normalised scale, nan where missing: min-max over the finite values to n in
        [0, 1], then z = 1 / (1 / RELATIVE_NEAR_FAR + (1 - 1 / RELATIVE_NEAR_FAR) n), from 1 (nearest) to
        RELATIVE_NEAR_FAR (farthest). A constant map is all at z = 1."""
        d = _checked_2d(depth).astype(np.float64)  # float64: max - min of float32 values can overflow float32
        finite = np.isfinite(d)
        lo, hi = (d[finite].min(), d[finite].max()) if finite.any() else (0.0, 0.0)
        span = hi - lo
        n = (d - lo) / span if span > 0 and math.isfinite(span) else np.ones_like(d)
        inv_far = 1.0 / RELATIVE_NEAR_FAR
        return np.where(finite, 1.0 / (inv_far + (1.0 - inv_far) * n), np.nan).astype(np.float32)

    def z_units(self) -> str:
        return f"normalised units (nearest 1, farthest {RELATIVE_NEAR_FAR:g})"


@dataclasses.dataclass(frozen=True)
class MetricDepth:
    """Depth in meters, coloured over the fixed range 0..top_m (see the module doc)."""

    top_m: float
    units: str = "meters"
    up_to_scale: bool = False  # absolute: frames are not aligned, the colour range is fixed

    def unit(self, depth_m: np.ndarray) -> np.ndarray:
        """(H, W) meters -> (H, W) colour positions in [0, 1]: 1 at 0 m, 0 at top_m and beyond (NaN: far)."""
        top = self.top_m
        return 1.0 - np.clip(np.nan_to_num(np.asarray(depth_m, np.float64), nan=top) / top, 0.0, 1.0)

    def png16(self, depth_m: np.ndarray) -> np.ndarray:
        """(H, W) meters -> uint16 over the fixed range: 65535 at 0 m, 0 at top_m and beyond (near = bright)."""
        top = self.top_m
        return (65535 * (1.0 - np.clip(np.nan_to_num(depth_m, nan=top) / top, 0.0, 1.0))).astype(np.uint16)

    def png_text(self) -> dict[str, str] | None:
        return {"depth": "metric, meters", "depth_range_m": f"0 {self.top_m:g}", "near": "bright"}

    def range_text(self) -> str | None:
        return f"metric depth, colour range 0..{self.top_m:g} m (near bright)"

    def z(self, depth_m: np.ndarray) -> np.ndarray:
        """(H, W) float32 z in meters as it is; non-finite and non-positive values are missing (nan)."""
        d = _checked_2d(depth_m).astype(np.float64)
        return np.where(np.isfinite(d) & (d > 0), d, np.nan).astype(np.float32)

    def z_units(self) -> str:
        return "meters"


DepthOutput = RelativeInverseDepth | MetricDepth
RELATIVE = RelativeInverseDepth()  # stateless: the one a relative model's output is (and outputs' default)
