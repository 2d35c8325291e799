"""Shared by the tests/test_evaluation_*.py files: tiny dataset folders written in each dataset's shipped format
(from the formats' own descriptions, never from our readers), and the reference protocols written from the
published formulas (ZoeDepth's `compute_metrics` / `compute_errors`, MiDaS' gist alignment), with torch's
`F.interpolate` for the resizes the originals make."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

NINE = ("a1", "a2", "a3", "abs_rel", "rmse", "log_10", "rmse_log", "silog", "sq_rel")


# --- the references ---------------------------------------------------------------------------------------------------


def errors_from_formula(gt: np.ndarray, pred: np.ndarray, dtype=np.float64) -> dict[str, float]:
    """The nine metrics as ZoeDepth's paper / compute_errors define them, in `dtype` (the original: float32)."""
    gt, pred = gt.astype(dtype), pred.astype(dtype)
    ratio = np.maximum(gt / pred, pred / gt)
    e = np.log(pred) - np.log(gt)
    return {
        "a1": (ratio < 1.25).mean(),
        "a2": (ratio < 1.25**2).mean(),
        "a3": (ratio < 1.25**3).mean(),
        "abs_rel": np.mean(np.abs(gt - pred) / gt),
        "rmse": np.sqrt(np.mean((gt - pred) ** 2)),
        "log_10": np.mean(np.abs(np.log10(gt) - np.log10(pred))),
        "rmse_log": np.sqrt(np.mean((np.log(gt) - np.log(pred)) ** 2)),
        "silog": np.sqrt(np.mean(e**2) - np.mean(e) ** 2) * 100,
        "sq_rel": np.mean((gt - pred) ** 2 / gt),
    }


def zoedepth_compute_metrics(gt, pred, min_depth, max_depth, crop, dtype=np.float32) -> dict[str, float]:
    """compute_metrics as published: torch bilinear (align_corners=True) to the ground truth when sizes differ, the
    clipping in its order, the (min, max) open range, the Eigen (45:471, 41:601) or Garg window, compute_errors."""
    p = torch.from_numpy(np.asarray(pred, np.float32))[None, None]
    if p.shape[-2:] != gt.shape:
        p = F.interpolate(p, gt.shape, mode="bilinear", align_corners=True)
    p = p[0, 0].numpy().copy()
    p[p < min_depth] = min_depth
    p[p > max_depth] = max_depth
    p[np.isinf(p)] = max_depth
    p[np.isnan(p)] = min_depth
    valid = (gt > min_depth) & (gt < max_depth)
    window = np.zeros(gt.shape)
    h, w = gt.shape
    if crop == "garg":
        window[int(0.40810811 * h) : int(0.99189189 * h), int(0.03594771 * w) : int(0.96405229 * w)] = 1
    elif crop == "eigen":
        window[45:471, 41:601] = 1
    else:
        window[:] = 1
    mask = valid & (window > 0)
    return errors_from_formula(gt[mask], p[mask], dtype)


def midas_relative(gt, valid, disparity, depth_cap, max_gt=None) -> dict[str, float]:
    """MiDaS' alignment, independently: torch bilinear (align_corners=False) to the ground truth, a float64
    least-squares fit (np.linalg.lstsq) of s p + t to 1 / gt over the valid finite pixels, clamp at 1 / cap, depth,
    metrics; non-finite predictions scored at the cap (our stated rule)."""
    p = torch.from_numpy(np.asarray(disparity, np.float32))[None, None]
    if p.shape[-2:] != gt.shape:
        p = F.interpolate(p, gt.shape, mode="bilinear", align_corners=False)
    p = p[0, 0].numpy().astype(np.float64)
    mask = valid & (gt > 0)
    if max_gt is not None:
        mask &= gt < max_gt
    fit = mask & np.isfinite(p)
    design = np.stack([p[fit], np.ones(fit.sum())], axis=1)
    (s, t), *_ = np.linalg.lstsq(design, 1.0 / gt[fit].astype(np.float64), rcond=None)
    aligned = np.where(np.isfinite(p), s * np.nan_to_num(p) + t, 1.0 / depth_cap)
    depth = 1.0 / np.maximum(aligned, 1.0 / depth_cap)
    g, d = gt[mask].astype(np.float64), depth[mask]
    out = errors_from_formula(g, d)
    out["bad_1.25_pct"] = 100 * np.mean(np.maximum(d / g, g / d) > 1.25)
    out["scale"], out["shift"] = s, t
    return out


def worst_relative(ours: dict, reference: dict, names) -> float:
    return max(abs(ours[n] - reference[n]) / max(abs(reference[n]), 1e-12) for n in names)


# --- data in each shipped format -------------------------------------------------------------------------------------


def room(height: int, width: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(image uint8 (H, W, 3), depth float64 meters (H, W) in 0.5..9.5) of a smooth synthetic room."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / np.array([height, width])[:, None, None]
    depth = 1.0 + 7.5 * (0.5 + 0.5 * np.sin(3 * x + 2 * y + rng.uniform(0, 6))) + 0.2 * rng.random((height, width))
    image = np.stack([255 * x, 255 * y, 255 * (depth / 10)], -1) + rng.normal(0, 8, (height, width, 3))
    return np.clip(image, 0, 255).astype(np.uint8), depth


def png16(path: Path, values: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(values, np.uint16)).save(path)


def rgb(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, quality=100) if path.suffix.lower() in (".jpg", ".jpeg") else Image.fromarray(
        image
    ).save(path)


def nyu_folder(root: Path, shape=(48, 64), scenes=("bathroom", "kitchen")) -> dict[str, np.ndarray]:
    """official_splits/test/<scene>/rgb_XXXXX.jpg + sync_depth_XXXXX.png (uint16 mm, 0 = hole); -> {key: depth m}."""
    truth = {}
    for n, scene in enumerate(scenes):
        image, depth = room(*shape, n)
        mm = np.round(depth * 1000).astype(np.uint16)
        mm[: shape[0] // 6, : shape[1] // 5] = 0  # a hole
        folder = root / "official_splits" / "test" / scene
        rgb(folder / f"rgb_{n + 45:05d}.jpg", image)
        png16(folder / f"sync_depth_{n + 45:05d}.png", mm)
        truth[f"{scene}/rgb_{n + 45:05d}"] = mm / 1000.0
    return truth


def dpt_bytes(depth: np.ndarray) -> bytes:
    """Sintel's .dpt: float32 202021.25, int32 width, int32 height, float32 data (little-endian)."""
    h, w = depth.shape
    return struct.pack("<fii", 202021.25, w, h) + np.asarray(depth, "<f4").tobytes()
