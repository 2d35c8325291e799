"""The depth metrics of the reference evaluations, computed in numpy float64 on the pixels a protocol selected.

`depth_errors` is ZoeDepth's `compute_errors` (`zoedepth/utils/misc.py`), the nine metrics that ZoeDepth, Depth
Anything (V1's metric_depth) and the BTS / AdaBins line report, with the same definitions (gt, pred: depth in
meters, or in the units of an aligned relative map):

    thresh = max(gt / pred, pred / gt);  a1, a2, a3 = mean(thresh < 1.25 ** k), k = 1, 2, 3
    abs_rel = mean(|gt - pred| / gt)             sq_rel = mean((gt - pred) ** 2 / gt)
    rmse = sqrt(mean((gt - pred) ** 2))          rmse_log = sqrt(mean((log gt - log pred) ** 2))
    log_10 = mean(|log10 gt - log10 pred|)       silog = 100 sqrt(mean(e ** 2) - mean(e) ** 2), e = log pred - log gt

`bad_pixel_pct` is the MiDaS table's "delta > 1.25" (MiDaS' evaluation gist, `BadPixelMetric`): the percentage of
pixels with max(pred / gt, gt / pred) > 1.25, lower is better (100 - 100 a1 up to pixels exactly at 1.25).

Differences from the originals, on purpose: float64 throughout (ZoeDepth computes in the float32 of its arrays: its
means carry ~1e-7 relative rounding); silog's variance is clamped at 0 (float rounding can make it -1e-17 where the
original returns NaN). Every image is scored on its own and the dataset's figure is the mean over images
(`average`), as ZoeDepth's `RunningAverageDict` and the MiDaS gist do.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

DEPTH_METRICS = ("a1", "a2", "a3", "abs_rel", "rmse", "log_10", "rmse_log", "silog", "sq_rel")
BAD_PIXEL = "bad_1.25_pct"  # the MiDaS table's delta > 1.25, in percent
HIGHER_IS_BETTER = frozenset({"a1", "a2", "a3"})


def depth_errors(gt: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """(N,) ground truth and (N,) predicted depth of the selected pixels -> the nine metrics (module doc), floats.
    Both must be positive for finite results (the protocols clip and mask so that they are)."""
    gt = np.asarray(gt, np.float64).ravel()
    pred = np.asarray(pred, np.float64).ravel()
    if gt.shape != pred.shape or gt.size == 0:
        raise ValueError(f"depth_errors needs two arrays of the same non-zero size; got {gt.shape}, {pred.shape}")
    with np.errstate(divide="ignore", invalid="ignore"):
        thresh = np.maximum(gt / pred, pred / gt)
        diff = gt - pred
        log_gt, log_pred = np.log(gt), np.log(pred)
        err = log_pred - log_gt
        return {
            "a1": float(np.mean(thresh < 1.25)),
            "a2": float(np.mean(thresh < 1.25**2)),
            "a3": float(np.mean(thresh < 1.25**3)),
            "abs_rel": float(np.mean(np.abs(diff) / gt)),
            "rmse": float(np.sqrt(np.mean(diff**2))),
            "log_10": float(np.mean(np.abs(np.log10(gt) - np.log10(pred)))),
            "rmse_log": float(np.sqrt(np.mean((log_gt - log_pred) ** 2))),
            "silog": float(np.sqrt(max(np.mean(err**2) - np.mean(err) ** 2, 0.0)) * 100),
            "sq_rel": float(np.mean(diff**2 / gt)),
        }


def bad_pixel_pct(gt: np.ndarray, pred: np.ndarray, threshold: float = 1.25) -> float:
    """Percentage of pixels with max(pred / gt, gt / pred) > threshold (MiDaS' `BadPixelMetric`), (N,) arrays."""
    gt = np.asarray(gt, np.float64).ravel()
    pred = np.asarray(pred, np.float64).ravel()
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(100.0 * np.mean(np.maximum(pred / gt, gt / pred) > threshold))


def average(rows: Iterable[Mapping[str, float]], names: Iterable[str]) -> dict[str, float]:
    """The mean over images of each metric in `names` (rows: one dict per scored image); NaN with no rows."""
    rows = list(rows)
    return {name: float(np.mean([row[name] for row in rows])) if rows else float("nan") for name in names}
