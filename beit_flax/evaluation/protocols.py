"""The two evaluation protocols, stated exactly: metric depth as ZoeDepth's `evaluate.py`, relative (affine-
invariant) depth as MiDaS' evaluation.

Metric (`metric_scores`; ZoeDepth `evaluate.py` `infer` and `zoedepth/utils/misc.py` `compute_metrics`, ranges and
crops from `zoedepth/utils/config.py` `DATASETS_CONFIG`, held per dataset in `MetricSpec`):
  1. the prediction is the average of the network's output on the image and the flipped-back output on the
     horizontally flipped image, at the network's resolution (the runner does this);
  2. resized to the ground truth with bilinear, align_corners=True (when the sizes differ);
  3. clipped: below min_depth -> min_depth, above max_depth -> max_depth, +-inf -> max_depth / min_depth, NaN ->
     min_depth (in that order, as the original: -inf is below the minimum);
  4. pixels scored: ground truth in (min_depth, max_depth), both open, and inside the crop: "eigen" the fixed
     window rows 45:471, columns 41:601 (NYU's 480 x 640; ZoeDepth applies the same indices to every non-KITTI
     dataset), "garg" rows int(0.40810811 H):int(0.99189189 H), columns int(0.03594771 W):int(0.96405229 W);
     also the dataset's own validity mask (DIODE, iBims-1; ZoeDepth folds iBims-1's into the depth and ignores
     DIODE's: invalid DIODE pixels hold depth 0, outside the range either way);
  5. the nine metrics (`metrics.depth_errors`), per image, averaged over images.
  KITTI also gets ZoeDepth's "KB crop" (`do_kb_crop`): image and ground truth cut to the bottom-centred 352 x 1216
  before the model sees the image (`kb_crop`).

Relative (`relative_scores`; MiDaS' evaluation gist, `BadPixelMetric`, linked from MiDaS issues #29, #108, #114;
cap and mask per dataset in `RelativeSpec`):
  1. the prediction (relative inverse depth; a metric model's depth d is turned into 1 / d) is resized to the
     ground truth with bilinear, align_corners=False (the gist's `F.interpolate`);
  2. pixels: the dataset's validity mask, ground truth > 0 (and < max_gt where the gist bounds it: NYU's 10 m);
  3. scale s and shift t minimise sum (s p + t - 1 / gt) ** 2 over those pixels: the 2 x 2 normal equations, in
     float64 (a determinant <= 0 gives s = t = 0, as the gist);
  4. aligned disparity s p + t, clamped below at 1 / depth_cap; depth = 1 / that;
  5. the nine metrics and the bad-pixel percentage on depth, per image, averaged over images; the MiDaS table
     reports one per dataset (`RelativeSpec.headline`: bad_1.25_pct for NYU, KITTI; abs_rel for ETH3D, Sintel).
  Non-finite predicted pixels are left out of the fit and scored at the depth cap (the farthest the protocol
  allows), so that a NaN cannot hide in a mean.

Everything here is numpy on the host; `resize_bilinear` is torch's `F.interpolate(mode="bilinear")` in float32
(align_corners False; True is `transforms.resize_bilinear_align_corners`).
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from beit_flax.evaluation.metrics import BAD_PIXEL, DEPTH_METRICS, bad_pixel_pct, depth_errors
from beit_flax.transforms import resize_bilinear_align_corners

CROPS = ("eigen", "garg")
KB_CROP_HW = (352, 1216)  # ZoeDepth / BTS `do_kb_crop`: KITTI's common size, bottom-centred


@dataclasses.dataclass(frozen=True)
class MetricSpec:
    """One dataset's metric protocol, from ZoeDepth's eval config: the range (min_depth_eval, max_depth_eval), the
    crop (None, "eigen" or "garg"), and whether the image and ground truth get the KB crop first."""

    min_depth: float
    max_depth: float
    crop: str | None
    kb_crop: bool = False

    def describe(self) -> dict:
        return {
            "name": "metric",
            "reference": "ZoeDepth evaluate.py / compute_metrics",
            "flip_average": True,
            "resize": "bilinear, align_corners=True, to the ground truth",
            "depth_range_m": [self.min_depth, self.max_depth],
            "crop": self.crop,
            "kb_crop": self.kb_crop,
            "metrics": list(DEPTH_METRICS),
        }


@dataclasses.dataclass(frozen=True)
class RelativeSpec:
    """One dataset's relative protocol: the depth cap (aligned disparity >= 1 / depth_cap), the bound on the ground
    truth (None: none), the metric the MiDaS table reports, and where the cap comes from."""

    depth_cap: float
    max_gt: float | None
    headline: str
    source: str

    def describe(self) -> dict:
        return {
            "name": "relative",
            "reference": "MiDaS evaluation (BadPixelMetric gist): least-squares scale and shift in disparity",
            "flip_average": False,
            "resize": "bilinear, align_corners=False, to the ground truth",
            "depth_cap_m": self.depth_cap,
            "max_gt_m": self.max_gt,
            "headline": self.headline,
            "cap_source": self.source,
            "metrics": [*DEPTH_METRICS, BAD_PIXEL],
        }


@functools.lru_cache(maxsize=64)
def _linear_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    # torch's upsample_bilinear2d, align_corners=False: src = max(scale (dst + 0.5) - 0.5, 0) with a float32 scale,
    # the product in double (dst + 0.5 is a double in its C++), then rounded to float32
    scale = float(np.float32(in_size / out_size))
    src = np.maximum(((np.arange(out_size) + 0.5) * scale - 0.5).astype(np.float32), np.float32(0))
    low = np.minimum(src.astype(np.int64), in_size - 1)
    high = np.minimum(low + 1, in_size - 1)
    t = (src - low.astype(np.float32)).astype(np.float32)
    return low, high, (np.float32(1) - t).astype(np.float32), t


def resize_bilinear(depth_hw: np.ndarray, size_hw: tuple[int, int], align_corners: bool) -> np.ndarray:
    """(H, W) -> (size_h, size_w) float32, torch's bilinear interpolation (no antialias; to 2.4e-7 of the values,
    measured): NaN and inf spread to the pixels they touch, as in torch. An axis kept at its size is the identity
    here, where torch's kernel can still turn an inf next to the kept axis into NaN."""
    depth_hw = np.asarray(depth_hw, np.float32)
    if depth_hw.shape == tuple(size_hw):
        return depth_hw
    if align_corners:
        return resize_bilinear_align_corners(depth_hw, size_hw)
    out = depth_hw
    for axis in (1, 0):
        if out.shape[axis] == size_hw[axis]:
            continue
        low, high, w_low, w_high = _linear_taps(out.shape[axis], size_hw[axis])
        shape = [1, 1]
        shape[axis] = -1
        out = np.take(out, low, axis=axis) * w_low.reshape(shape) + np.take(out, high, axis=axis) * w_high.reshape(
            shape
        )
    return out


def crop_mask(shape_hw: tuple[int, int], crop: str | None) -> np.ndarray:
    """(H, W) bool: the evaluation window of `compute_metrics` (module doc, step 4)."""
    height, width = shape_hw
    mask = np.zeros((height, width), bool)
    if crop is None:
        mask[:] = True
    elif crop == "garg":
        mask[int(0.40810811 * height) : int(0.99189189 * height), int(0.03594771 * width) : int(0.96405229 * width)] = 1
    elif crop == "eigen":
        mask[45:471, 41:601] = True
    else:
        raise ValueError(f"unknown crop {crop!r}; one of {CROPS} or None")
    return mask


def kb_crop(array: np.ndarray) -> np.ndarray:
    """(H, W, ...) -> the bottom-centred 352 x 1216 window (ZoeDepth's `do_kb_crop`: top = H - 352, left =
    int((W - 1216) / 2)); ValueError for a smaller array."""
    height, width = array.shape[:2]
    crop_h, crop_w = KB_CROP_HW
    if height < crop_h or width < crop_w:
        raise ValueError(f"the KB crop needs at least {crop_h} x {crop_w} pixels; got {height} x {width}")
    top, left = height - crop_h, int((width - crop_w) / 2)
    return array[top : top + crop_h, left : left + crop_w]


def clip_like_zoedepth(pred: np.ndarray, min_depth: float, max_depth: float) -> np.ndarray:
    """`compute_metrics`' clipping, in its order: < min -> min, > max -> max, inf -> max, NaN -> min (float64)."""
    pred = np.array(pred, np.float64)
    with np.errstate(invalid="ignore"):
        pred[pred < min_depth] = min_depth
        pred[pred > max_depth] = max_depth
    pred[np.isinf(pred)] = max_depth
    pred[np.isnan(pred)] = min_depth
    return pred


def metric_scores(gt: np.ndarray, valid: np.ndarray, pred: np.ndarray, spec: MetricSpec) -> dict[str, float] | None:
    """Ground truth (H, W) meters, its validity (H, W) bool, a prediction (h, w) meters at any resolution -> the
    nine metrics of this image (module doc), plus "pixels"; None when no pixel is left to score."""
    gt = np.asarray(gt, np.float32)
    pred = clip_like_zoedepth(resize_bilinear(pred, gt.shape, align_corners=True), spec.min_depth, spec.max_depth)
    with np.errstate(invalid="ignore"):
        mask = valid & (gt > spec.min_depth) & (gt < spec.max_depth) & crop_mask(gt.shape, spec.crop)
    if not mask.any():
        return None
    return {**depth_errors(gt[mask], pred[mask]), "pixels": int(mask.sum())}


def scale_and_shift(pred: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    """(N,) prediction p and (N,) target d -> (s, t) minimising sum (s p + t - d) ** 2, by the normal equations in
    float64; (0, 0) where the determinant is not positive (all p equal, or no pixels), as MiDaS' gist."""
    p = np.asarray(pred, np.float64).ravel()
    d = np.asarray(target, np.float64).ravel()
    a00, a01, a11 = np.dot(p, p), p.sum(), float(p.size)
    b0, b1 = np.dot(p, d), d.sum()
    det = a00 * a11 - a01 * a01
    if not det > 0:
        return 0.0, 0.0
    return float((a11 * b0 - a01 * b1) / det), float((-a01 * b0 + a00 * b1) / det)


def to_disparity(depth: np.ndarray) -> np.ndarray:
    """Metric depth -> inverse depth for the relative protocol: 1 / d for d > 0 (+inf -> 0); d <= 0 and NaN -> NaN
    (not finite: left out of the fit, module doc)."""
    depth = np.asarray(depth, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(depth > 0, 1.0 / depth, np.nan)


def relative_scores(
    gt: np.ndarray, valid: np.ndarray, disparity: np.ndarray, spec: RelativeSpec
) -> dict[str, float] | None:
    """Ground truth (H, W) meters, its validity, a prediction (h, w) of relative inverse depth at any resolution ->
    the nine metrics and the bad-pixel percentage on the aligned depth (module doc), plus "pixels", "scale" and
    "shift"; None when no pixel is left to score."""
    gt = np.asarray(gt, np.float64)
    pred = resize_bilinear(disparity, gt.shape, align_corners=False).astype(np.float64)
    with np.errstate(invalid="ignore"):
        mask = valid & (gt > 0) & np.isfinite(gt)
        if spec.max_gt is not None:
            mask &= gt < spec.max_gt
    if not mask.any():
        return None
    finite = np.isfinite(pred)
    fit = mask & finite
    scale, shift = scale_and_shift(pred[fit], 1.0 / gt[fit])
    floor = 1.0 / spec.depth_cap
    aligned = np.where(finite, scale * np.where(finite, pred, 0.0) + shift, floor)
    depth = 1.0 / np.maximum(aligned, floor)
    scores = depth_errors(gt[mask], depth[mask])
    scores[BAD_PIXEL] = bad_pixel_pct(gt[mask], depth[mask])
    return {**scores, "pixels": int(mask.sum()), "scale": scale, "shift": shift}
