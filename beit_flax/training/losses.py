"""MiDaS training losses and metrics (Ranftl et al., "Towards Robust Monocular Depth Estimation"), pure JAX; and
for metric depth (ZoeDepth) its scale-invariant log loss `silog_loss` and unaligned `metric_depth_metrics`.

All functions take batched maps (B, H, W): `pred` the network output, `target` the ground-truth inverse depth,
`mask` 1 where the target is valid (bool or 0/1 float). Nothing is computed from invalid pixels, whatever they hold
(inf / NaN targets are fine), and every division is guarded, so an image without valid pixels contributes 0 and
no NaN, to the value and to the gradient.

    (s, t)   = argmin  sum M (s p + t - d)^2                     per image (`align_scale_shift`)
    data     = sum_b sum M (s p + t - d)^2 / (2 sum_b sum M)      over the batch
    gradient = sum_{k=0..3} sum_b sum |R_x| + |R_y| over pairs of valid pixels / sum_b sum M,  R = M (s p + t - d),
               at every 2^k-th pixel (mask subsampled the same way)
    loss     = data + 0.5 * gradient

`ssimae_loss` and `ssitrim_loss` are the paper's robust variants (its eqs. 5-7): each map normalised by its own
median and mean absolute deviation instead of least-squares fitted; ssitrim also leaves out the largest 20% of each
image's residuals. Their scale is positive by construction, so inverted depth cannot satisfy them. The least-squares
fit can flip a prediction's sign: a model trained from a random init on `ssi_loss` learns inverted depth
(examples/finetune.py's generated scenes, seeds 0, 1, 2: correlation -0.5..-0.98 with the true inverse depth, with
good aligned metrics, since `depth_metrics` aligned with a free sign too; it no longer does).
"""

from __future__ import annotations

import jax.numpy as jnp

TRIM = 0.2  # MiDaS' ssitrim: the share of each image's largest residuals left out

# A prediction whose spread over the valid pixels is below ~1e-6 of its magnitude is constant to float32: the fit
# would be rounding noise, so it counts as singular (s = t = 0), like an exactly singular system.
_SINGULAR_RTOL = 1e-12


def _inputs(pred: jnp.ndarray, target: jnp.ndarray, mask: jnp.ndarray) -> tuple[jnp.ndarray, ...]:
    """Validate shapes; return float32 (pred, target with invalid pixels zeroed, mask as 0/1)."""
    shapes = {"pred": jnp.shape(pred), "target": jnp.shape(target), "mask": jnp.shape(mask)}
    if len(shapes["pred"]) != 3 or len(set(shapes.values())) != 1:
        raise ValueError(f"pred, target and mask must all be (B, H, W); got {shapes}")
    mask = (jnp.asarray(mask) > 0).astype(jnp.float32)
    target = jnp.where(mask > 0, jnp.asarray(target, jnp.float32), 0.0)  # inf/NaN * 0 would still be NaN
    return jnp.asarray(pred, jnp.float32), target, mask


def _safe_div(num: jnp.ndarray, den: jnp.ndarray) -> jnp.ndarray:
    """num / den where den > 0, else 0; the where-twice form keeps the gradient finite too."""
    ok = den > 0
    return jnp.where(ok, num / jnp.where(ok, den, 1.0), 0.0)


def align_scale_shift(pred: jnp.ndarray, target: jnp.ndarray, mask: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Per-image least-squares (s, t), each (B,), minimising sum M (s pred + t - target)^2.

    The solution of the 2x2 normal equations [[sum M p^2, sum M p], [sum M p, sum M]] [s, t] = [sum M p d, sum M d],
    computed in centred form (s = cov(p, d) / var(p), t = mean d - s mean p: the same solution, without float32
    cancellation in the determinant). Singular (no valid pixel, or constant prediction): s = t = 0.
    Differentiable: the loss gradient flows through s and t, as in MiDaS.
    """
    pred, target, mask = _inputs(pred, target, mask)
    total = lambda x: jnp.sum(x, axis=(1, 2))
    count = total(mask)
    mean_p, mean_d = _safe_div(total(mask * pred), count), _safe_div(total(mask * target), count)
    # one correction pass: a float32 sum is off by ~1e-6 relative, which alone would give a constant prediction a
    # nonzero variance; after it the mean of a constant is exact to an ulp
    mean_p = mean_p + _safe_div(total(mask * (pred - mean_p[:, None, None])), count)
    centred = mask * (pred - mean_p[:, None, None])
    var = total(centred * centred)
    cov = total(centred * (target - mean_d[:, None, None]))
    singular = var <= _SINGULAR_RTOL * total(mask * pred * pred)  # also true without valid pixels (0 <= 0)
    scale = jnp.where(singular, 0.0, cov / jnp.where(singular, 1.0, var))
    shift = jnp.where(singular, 0.0, mean_d - scale * mean_p)
    return scale, shift


def _aligned(pred: jnp.ndarray, target: jnp.ndarray, mask: jnp.ndarray) -> jnp.ndarray:
    scale, shift = align_scale_shift(pred, target, mask)
    return scale[:, None, None] * pred + shift[:, None, None]


def _sorted_valid(x: jnp.ndarray, mask: jnp.ndarray) -> jnp.ndarray:
    """(B, H, W) -> (B, H W): each image's valid values ascending, then +inf for the invalid pixels."""
    return jnp.sort(jnp.where(mask > 0, x, jnp.inf).reshape(x.shape[0], -1), axis=1)


def _masked_median(x: jnp.ndarray, mask: jnp.ndarray) -> jnp.ndarray:
    """(B, H, W) -> (B,) median of the valid pixels (mean of the two middle ones for an even count); 0 for none."""
    count = jnp.sum(mask, axis=(1, 2)).astype(jnp.int32)
    ordered = _sorted_valid(x, mask)
    middle = jnp.stack([jnp.maximum(count - 1, 0) // 2, count // 2], axis=1)
    halves = jnp.take_along_axis(ordered, jnp.minimum(middle, ordered.shape[1] - 1), axis=1)
    return jnp.where(count > 0, 0.5 * (halves[:, 0] + halves[:, 1]), 0.0)


def normalise_median_mad(x: jnp.ndarray, mask: jnp.ndarray) -> jnp.ndarray:
    """MiDaS eq. 6 per image: (x - t) / s, t the median and s the mean |x - t| of the valid pixels; 0 where invalid,
    and for an image that is constant or has no valid pixel."""
    median = _masked_median(x, mask)[:, None, None]
    spread = _safe_div(jnp.sum(mask * jnp.abs(x - median), axis=(1, 2)), jnp.sum(mask, axis=(1, 2)))
    return mask * _safe_div(x - median, spread[:, None, None])


def ssimae_loss(
    pred: jnp.ndarray, target: jnp.ndarray, mask: jnp.ndarray, *, trim: float = 0.0
) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
    """MiDaS' mean-absolute-error scale-and-shift-invariant loss on median / MAD normalised maps (eq. 6 with
    eq. 5's ssimae; with `trim`, eq. 7's ssitrim, MiDaS' choice: the largest `trim` of each image's residuals left
    out): (scalar, {"data": scalar}).

    data = sum_b (sum of the smallest floor((1 - trim) M_b) of |n(p) - n(d)|) / (2 sum_b M_b), with
    n = `normalise_median_mad`. Without MiDaS' gradient-matching term: trained from a random init on the generated
    64 px scenes, ssitrim + 0.5 x gradient matching never found the sign of depth (correlation with the true inverse
    depth -0.1..-0.7 after 1200 steps of examples/finetune.py). On those clean scenes ssimae (AbsRel 0.200, delta1
    0.686 after 400 steps) beats ssitrim (0.303, 0.384), whose untrimmed fifth of the pixels is free to take any value
    (peaky maps, max / median ~15 vs ~7); ssitrim is for real data, whose ground truth has outliers.
    """
    pred, target, mask = _inputs(pred, target, mask)
    residual = normalise_median_mad(pred, mask) - normalise_median_mad(target, mask)
    count = jnp.sum(mask, axis=(1, 2))
    if not trim:
        data = _safe_div(jnp.sum(mask * jnp.abs(residual)), 2.0 * jnp.sum(count))
        return data, {"data": data}
    ordered = _sorted_valid(jnp.abs(residual), mask)
    kept = jnp.arange(ordered.shape[1])[None, :] < jnp.floor((1.0 - trim) * count)[:, None]
    data = _safe_div(jnp.sum(jnp.where(kept, ordered, 0.0)), 2.0 * jnp.sum(count))
    return data, {"data": data}


def ssitrim_loss(pred: jnp.ndarray, target: jnp.ndarray, mask: jnp.ndarray) -> tuple[jnp.ndarray, dict]:
    """MiDaS' trimmed loss (eq. 7): `ssimae_loss` with the largest 20% of each image's residuals left out."""
    return ssimae_loss(pred, target, mask, trim=TRIM)


def gradient_matching(residual: jnp.ndarray, mask: jnp.ndarray, scales: int = 4) -> jnp.ndarray:
    """Multi-scale gradient-matching term of a residual map (B, H, W) (aligned prediction - target) -> scalar.

    At scale k (every 2^k-th pixel): sum of |dR/dx| + |dR/dy| over neighbouring pairs that are both valid, with
    R = M * residual, divided by the batch's valid pixels at that scale; the scales are summed.
    """
    mask = (jnp.asarray(mask) > 0).astype(jnp.float32)
    residual = jnp.where(mask > 0, residual, 0.0)
    loss = jnp.zeros((), jnp.float32)
    for k in range(scales):
        r, m = residual[:, :: 2**k, :: 2**k], mask[:, :: 2**k, :: 2**k]
        grad_x = jnp.abs(r[:, :, 1:] - r[:, :, :-1]) * m[:, :, 1:] * m[:, :, :-1]
        grad_y = jnp.abs(r[:, 1:, :] - r[:, :-1, :]) * m[:, 1:, :] * m[:, :-1, :]
        loss += _safe_div(jnp.sum(grad_x) + jnp.sum(grad_y), jnp.sum(m))
    return loss


def ssi_loss(
    pred: jnp.ndarray, target: jnp.ndarray, mask: jnp.ndarray, *, alpha: float = 0.5, scales: int = 4
) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
    """MiDaS scale-and-shift-invariant loss on inverse depth: (scalar, {"data": scalar, "gradient": scalar}).

    pred, target, mask: (B, H, W). `alpha` weights the gradient-matching term (0.5 in MiDaS; 0 turns it off).
    """
    pred, target, mask = _inputs(pred, target, mask)
    residual = mask * (_aligned(pred, target, mask) - target)
    data = _safe_div(jnp.sum(residual * residual), 2.0 * jnp.sum(mask))
    gradient = gradient_matching(residual, mask, scales) if alpha else jnp.zeros((), jnp.float32)
    return data + alpha * gradient, {"data": data, "gradient": gradient}


def depth_metrics(
    pred: jnp.ndarray, target: jnp.ndarray, mask: jnp.ndarray, depth_cap: float | None = None
) -> dict[str, jnp.ndarray]:
    """AbsRel and delta1 per image after scale-and-shift alignment in inverse depth, evaluated in depth space. The
    scale is kept >= 0: an anti-correlated (inverted) prediction is aligned to the constant mean, not flipped.

    pred, target (inverse depth), mask: (B, H, W). The aligned inverse depth is clipped below at 1 / depth_cap
    (MiDaS' evaluation: a dataset's maximum depth, e.g. 10 for NYU, 80 for KITTI); `None` caps at each image's
    largest valid ground-truth depth. Pixels with target <= 0 are invalid.
    Returns {"abs_rel": (B,), "delta1": (B,), "valid": (B,) pixel counts}; images without valid pixels give 0.
    """
    pred, target, mask = _inputs(pred, target, mask)
    mask = mask * (target > 0)
    scale, shift = align_scale_shift(pred, target, mask)
    scale = jnp.maximum(scale, 0.0)  # a flipped map is no depth map: anti-correlated ones are fitted by a constant
    shift = jnp.where(scale > 0, shift, _safe_div(jnp.sum(mask * target, (1, 2)), jnp.sum(mask, (1, 2))))
    aligned = scale[:, None, None] * pred + shift[:, None, None]
    true_depth = 1.0 / jnp.where(mask > 0, target, 1.0)
    if depth_cap is None:
        floor = jnp.min(jnp.where(mask > 0, target, jnp.inf), axis=(1, 2), keepdims=True)
        floor = jnp.where(jnp.isfinite(floor), floor, 1.0)
    else:
        if not depth_cap > 0:
            raise ValueError(f"depth_cap must be positive, got {depth_cap}")
        floor = jnp.full((1, 1, 1), 1.0 / depth_cap, jnp.float32)
    pred_depth = 1.0 / jnp.maximum(aligned, floor)
    count = jnp.sum(mask, axis=(1, 2))
    abs_rel = jnp.abs(pred_depth - true_depth) / true_depth
    ratio = jnp.maximum(pred_depth / true_depth, true_depth / pred_depth)
    return {
        "abs_rel": _safe_div(jnp.sum(mask * abs_rel, axis=(1, 2)), count),
        "delta1": _safe_div(jnp.sum(mask * (ratio < 1.25), axis=(1, 2)), count),
        "valid": count,
    }


# --- metric depth (ZoeDepth, Depth Anything) -------------------------------------------------------------------------

SILOG_EPS = 1e-7  # added inside both logs, as the original's `alpha`


def silog_loss(
    pred: jnp.ndarray, target: jnp.ndarray, mask: jnp.ndarray, *, beta: float = 0.15, scale: float = 10.0
) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
    """ZoeDepth's scale-invariant log loss on metric depth: (scalar, {"silog": scalar}).

    pred, target: (B, H, W) depth in meters; mask: valid targets. As `SILogLoss.forward` (zoedepth/trainers/loss.py,
    from AdaBins), over the valid pixels of the whole batch pooled (its `input[mask]`):

        g = log(pred + 1e-7) - log(target + 1e-7)
        loss = 10 * sqrt(var(g) + beta * mean(g)^2),   beta = 0.15, var unbiased (torch.var: / (n - 1))

    i.e. 10 sqrt(mean(g^2) - 0.85 mean(g)^2) (Eigen et al.'s lambda = 1 - beta = 0.85) up to var's n / (n - 1).
    Fewer than 2 valid pixels give 0 (the original gives NaN); the square root's gradient is guarded at 0.
    The original first resizes pred to the target's size (bilinear, align_corners=True); here they must match.
    """
    pred, target, mask = _inputs(pred, target, mask)
    valid = mask > 0
    g = jnp.where(
        valid,
        jnp.log(jnp.where(valid, pred, 1.0) + SILOG_EPS) - jnp.log(jnp.where(valid, target, 1.0) + SILOG_EPS),
        0.0,
    )
    n = jnp.sum(mask)
    mean = _safe_div(jnp.sum(g), n)
    var = _safe_div(jnp.sum(mask * (g - mean) ** 2), n - 1.0)
    dg = jnp.where(n > 1, var + beta * mean**2, 0.0)
    loss = scale * jnp.where(dg > 0, jnp.sqrt(jnp.where(dg > 0, dg, 1.0)), 0.0)
    return loss, {"silog": loss}


def silog_da_loss(
    pred: jnp.ndarray, target: jnp.ndarray, mask: jnp.ndarray, *, lambd: float = 0.5
) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
    """Depth Anything's metric-depth loss: (scalar, {"silog": scalar}). As `SiLogLoss.forward`
    (Depth-Anything-V2 `metric_depth/util/loss.py`), over the valid pixels of the batch pooled:

        g = log(target) - log(pred)
        loss = sqrt(mean(g^2) - lambd * mean(g)^2),   lambd = 0.5, plain means

    Not ZoeDepth's `silog_loss` (x10, lambda 0.85, unbiased variance, 1e-7 inside the logs). pred is floored at
    1e-30 m before its log (the original takes the log of what the sigmoid gives, > 0 but for underflow); fewer than
    one valid pixel gives 0, and the square root's gradient is guarded at 0.
    """
    pred, target, mask = _inputs(pred, target, mask)
    valid = mask > 0
    g = jnp.where(valid, jnp.log(jnp.where(valid, target, 1.0)) - jnp.log(jnp.maximum(pred, 1e-30)), 0.0)
    n = jnp.sum(mask)
    dg = _safe_div(jnp.sum(g**2), n) - lambd * _safe_div(jnp.sum(g), n) ** 2
    loss = jnp.where(dg > 0, jnp.sqrt(jnp.where(dg > 0, dg, 1.0)), 0.0)
    return loss, {"silog": loss}


def metric_depth_metrics(pred: jnp.ndarray, target: jnp.ndarray, mask: jnp.ndarray) -> dict[str, jnp.ndarray]:
    """AbsRel, RMSE (meters) and delta1 per image of metric depth, without any alignment (ZoeDepth's
    `compute_errors`: a metric model is judged on its own scale).

    pred, target: (B, H, W) meters; mask: valid targets (pixels with target <= 0 are invalid too). pred is floored
    at 1e-7 m for the ratios. Returns {"abs_rel", "rmse", "delta1", "valid"}, each (B,); no valid pixel gives 0.
    """
    pred, target, mask = _inputs(pred, target, mask)
    mask = mask * (target > 0)
    true = jnp.where(mask > 0, target, 1.0)
    pred = jnp.maximum(pred, SILOG_EPS)
    count = jnp.sum(mask, axis=(1, 2))
    mean = lambda x: _safe_div(jnp.sum(mask * x, axis=(1, 2)), count)
    ratio = jnp.maximum(pred / true, true / pred)
    return {
        "abs_rel": mean(jnp.abs(pred - true) / true),
        "rmse": jnp.sqrt(mean((pred - true) ** 2)),
        "delta1": mean((ratio < 1.25).astype(jnp.float32)),
        "valid": count,
    }


# every training loss by name: (the function, the batch key of its target); `create_train_state(loss=...)` takes these
LOSSES = {
    "midas": (ssi_loss, "inverse_depth"),
    "ssimae": (ssimae_loss, "inverse_depth"),
    "ssitrim": (ssitrim_loss, "inverse_depth"),
    "silog": (silog_loss, "depth"),
    "silog-da": (silog_da_loss, "depth"),
}
