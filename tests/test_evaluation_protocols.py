"""The protocols against independent implementations written from the published formulas (evaluation_helpers):
ZoeDepth's compute_metrics (torch's resize, its clipping, crops, compute_errors in the original's float32) and MiDaS'
alignment (a float64 np.linalg.lstsq); with non-finite predictions, holes in the ground truth, and predictions at
another resolution. Tolerance: 1e-6 relative per metric (the issue's bar); the figures seen are in the asserts'
comments."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from evaluation_helpers import NINE, midas_relative, room, worst_relative, zoedepth_compute_metrics

from beit_flax.evaluation.metrics import BAD_PIXEL, bad_pixel_pct, depth_errors
from beit_flax.evaluation.protocols import (
    MetricSpec,
    RelativeSpec,
    kb_crop,
    metric_scores,
    relative_scores,
    resize_bilinear,
    scale_and_shift,
)

TOLERANCE = 1e-6


def prediction(gt: np.ndarray, shape: tuple[int, int], seed: int, broken: bool) -> np.ndarray:
    """A plausible prediction of `gt` at `shape` (smooth error, a scale), with NaN / +-inf / negative pixels."""
    rng = np.random.default_rng(seed)
    p = torch.from_numpy(gt.astype(np.float32))[None, None]
    p = F.interpolate(p, shape, mode="bilinear", align_corners=False)[0, 0].numpy()
    p = p * 1.07 * np.exp(rng.normal(0, 0.15, shape)).astype(np.float32)
    if broken:
        flat = p.reshape(-1)
        picks = rng.choice(flat.size, 40, replace=False)
        flat[picks[:10]], flat[picks[10:20]], flat[picks[20:30]], flat[picks[30:]] = np.nan, np.inf, -np.inf, -1.0
    return p


def ground_truth(shape: tuple[int, int], seed: int, top: float) -> tuple[np.ndarray, np.ndarray]:
    """(depth float32 with holes (0) and values over `top`, valid = depth > 0)."""
    _, depth = room(*shape, seed)
    depth = (depth * top / 10).astype(np.float32)
    rng = np.random.default_rng(seed + 100)
    depth[rng.random(shape) < 0.2] = 0  # holes
    depth[: shape[0] // 10] *= 1.5  # some beyond the range
    return depth, depth > 0


@pytest.mark.parametrize(
    "shape, pred_shape, spec, broken",
    [
        ((480, 640), (480, 640), MetricSpec(1e-3, 10.0, "eigen"), False),
        ((480, 640), (384, 512), MetricSpec(1e-3, 10.0, "eigen"), True),
        ((352, 1216), (384, 768), MetricSpec(1e-3, 80.0, "garg"), True),
        ((120, 160), (97, 131), MetricSpec(0.0, 10.0, None), True),  # iBims' 0 minimum, no crop
    ],
)
def test_metric_protocol_is_zoedepths_compute_metrics(shape, pred_shape, spec, broken):
    gt, valid = ground_truth(shape, 0, spec.max_depth)
    pred = prediction(gt, pred_shape, 1, broken)
    reference = zoedepth_compute_metrics(gt, pred, spec.min_depth, spec.max_depth, spec.crop)
    assert 0.5 < reference["a1"] < 0.95 and reference["rmse"] > 0.1  # a prediction that is neither right nor absurd
    ours = metric_scores(gt, valid, pred, spec)
    worst = worst_relative(ours, reference, NINE)
    assert worst <= TOLERANCE, (worst, ours, reference)  # seen: <= 1.1e-7 (the reference's float32)
    # the same in float64 on both sides: only the float32 resize's last bits and the summation order differ
    in_float64 = zoedepth_compute_metrics(gt, pred, spec.min_depth, spec.max_depth, spec.crop, np.float64)
    assert worst_relative(ours, in_float64, NINE) <= 1e-8  # seen: <= 4.3e-9


def test_metric_protocol_can_fail():
    """A prediction one pixel off, or another crop, moves the metrics beyond the tolerance: the check is not blind."""
    gt, valid = ground_truth((480, 640), 2, 10.0)
    pred = prediction(gt, (480, 640), 3, False)
    spec = MetricSpec(1e-3, 10.0, "eigen")
    reference = zoedepth_compute_metrics(gt, pred, 1e-3, 10.0, "eigen")
    assert worst_relative(metric_scores(gt, valid, np.roll(pred, 1, axis=1), spec), reference, NINE) > 1e-4
    assert worst_relative(metric_scores(gt, valid, pred, MetricSpec(1e-3, 10.0, "garg")), reference, NINE) > 1e-4


@pytest.mark.parametrize(
    "shape, pred_shape, cap, max_gt, broken",
    [
        ((480, 640), (480, 640), 10.0, 10.0, False),
        ((480, 640), (384, 512), 10.0, 10.0, True),
        ((375, 1242), (384, 1248), 80.0, None, True),
    ],
)
def test_relative_protocol_is_the_float64_least_squares_alignment(shape, pred_shape, cap, max_gt, broken):
    gt, valid = ground_truth(shape, 4, cap)
    with np.errstate(divide="ignore"):
        truth_disparity = np.where(gt > 0, 1.0 / np.maximum(gt, 1e-6), 0).astype(np.float32)
    # an affine-distorted inverse depth with noise: scale 3.2, shift -0.05
    disparity = prediction(3.2 * truth_disparity + 0.3, pred_shape, 5, broken)
    spec = RelativeSpec(cap, max_gt, BAD_PIXEL, "test")
    reference = midas_relative(gt, valid, disparity, cap, max_gt)
    assert 0 < reference[BAD_PIXEL] < 90 and reference["scale"] > 0
    ours = relative_scores(gt, valid, disparity, spec)
    names = (*NINE, BAD_PIXEL, "scale", "shift")
    worst = worst_relative(ours, reference, names)
    assert worst <= TOLERANCE, (worst, ours, reference)  # seen: <= 3e-9 (float32 resize bits; the fit: 6e-13)


def test_alignment_recovers_an_exact_affine_map_and_refuses_a_flat_one():
    rng = np.random.default_rng(0)
    target = rng.uniform(0.1, 1.0, 1000)
    s, t = scale_and_shift((target - 0.2) / 4.0, target)
    assert abs(s - 4.0) < 1e-12 and abs(t - 0.2) < 1e-12
    assert scale_and_shift(np.full(50, 3.0), target[:50]) == (0.0, 0.0)  # singular, as the gist: everything at the cap


def test_bilinear_resize_is_torchs_in_both_modes():
    rng = np.random.default_rng(1)
    image = rng.normal(size=(37, 53)).astype(np.float32)
    image[5, 7], image[20, 30] = np.nan, np.inf  # spread to the pixels they touch, as in torch
    for size in ((480, 640), (20, 31), (37, 80), (1, 5)):
        for corners in (False, True):
            ours = resize_bilinear(image, size, corners)
            theirs = F.interpolate(torch.from_numpy(image)[None, None], size, mode="bilinear", align_corners=corners)
            theirs = theirs[0, 0].numpy()
            if size[0] != image.shape[0]:  # a kept axis: torch may make NaN of an inf (see resize_bilinear)
                np.testing.assert_array_equal(np.isnan(ours), np.isnan(theirs))
            finite = np.isfinite(theirs)
            assert np.max(np.abs(ours[finite] - theirs[finite])) <= 1e-6 * np.max(np.abs(theirs[finite]))  # seen: 7e-8


def test_depth_errors_and_bad_pixels_from_the_formulas():
    gt = np.array([1.0, 2.0, 4.0, 8.0])
    pred = np.array([1.1, 1.0, 4.0, 20.0])
    errors = depth_errors(gt, pred)
    assert errors["a1"] == errors["a2"] == errors["a3"] == 0.5  # ratios 1.1, 2, 1, 2.5
    assert errors["abs_rel"] == pytest.approx((0.1 + 0.5 + 0 + 1.5) / 4)
    assert errors["rmse"] == pytest.approx(np.sqrt((0.01 + 1 + 0 + 144) / 4))
    e = np.log(pred) - np.log(gt)
    assert errors["silog"] == pytest.approx(100 * np.sqrt(np.mean(e**2) - np.mean(e) ** 2))
    assert bad_pixel_pct(gt, pred) == 50.0
    assert depth_errors(gt, gt)["silog"] == 0.0  # variance clamped at 0, not NaN


def test_kb_crop_is_bottom_centred():
    array = np.arange(375 * 1242).reshape(375, 1242)
    crop = kb_crop(array)
    assert crop.shape == (352, 1216) and crop[0, 0] == array[375 - 352, 13] and crop[-1, -1] == array[-1, 13 + 1215]
    with pytest.raises(ValueError, match="352 x 1216"):
        kb_crop(np.zeros((300, 1300)))
