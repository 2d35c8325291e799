"""Temporally stable relative depth for video.

MiDaS predicts affine-invariant inverse depth: every frame comes with its own unknown scale and shift, so per-frame
min-max colouring flickers whenever the lighting or the framing changes (MiDaS #87, #174). `Stabilizer` turns a
stream of such maps into one consistent map per frame, in two steps:

1. **Alignment.** The frame is fitted to a running reference (the previous stabilized frame) by a robust
   least-squares scale and shift (`fit_scale_shift`: Tukey-weighted IRLS on a fixed grid of pixels, so moving
   objects and newly visible regions do not drag the fit). A frame that the reference cannot explain (most of the
   sampled pixels off by more than `cut_error`) is a scene cut: the stream starts again from that frame.
2. **Noise gate.** Per pixel, the aligned frame replaces the reference in proportion to how far it moved relative
   to the frame's residual noise at that level (the noise is relative: near pixels flicker more): changes within
   the noise (lighting flicker, compression) are averaged away, changes well beyond it (motion, cuts) pass through
   at once, so moving content does not lag.

The output is in clip units: the first frame of each scene is min-max normalised to [0, 1] (exactly as MiDaS colours
a single frame), and every later frame is expressed on that frame's scale, so one fixed colour range, [0, 1], holds
for the whole clip (values outside it are clipped only in the picture).
"""

from __future__ import annotations

import dataclasses

import numpy as np

TUKEY_C = 4.685  # Tukey's biweight constant: 95% efficiency under Gaussian noise, zero weight beyond c sigma
MAD_TO_SIGMA = 1.4826  # median absolute deviation -> standard deviation of a Gaussian
START_CANDIDATES = 64  # two-sample lines tried for the robust start: P(no clean pair | 30% moved) = 0.51^64 ~ 1e-19


@dataclasses.dataclass(frozen=True)
class Fit:
    """`scale * x + shift` ~ reference; `outliers` is the fraction of samples off by more than the caller's error
    bound (reference units)."""

    scale: float
    shift: float
    outliers: float


def fit_scale_shift(x: np.ndarray, y: np.ndarray, *, iterations: int = 4, error: float = 0.1) -> Fit:
    """Robust `scale, shift` with `scale * x + shift ~ y` over 1-D float samples.

    A least-median-of-squares start (the best of `START_CANDIDATES` two-sample lines and the plain least-squares
    line, by median absolute residual: it holds while fewer than half the samples moved, where least squares is
    dragged by any large moving region), then `iterations` rounds of least squares re-weighted by Tukey's biweight
    at `TUKEY_C` robust sigmas. A constant `x` gives scale 0 and a robust (Tukey-weighted) mean of `y`.
    """
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    weights = np.ones_like(x)
    scale, shift = _weighted_line(x, y, weights)
    pick = np.random.default_rng(0).integers(0, x.size, (2, START_CANDIDATES))  # fixed: the same fit every run
    dx = x[pick[0]] - x[pick[1]]
    usable = np.abs(dx) > 1e-9 * (np.abs(x).max() + 1e-30)
    scales = np.append((y[pick[0]] - y[pick[1]])[usable] / dx[usable], scale)
    shifts = np.append(y[pick[0]][usable] - scales[:-1] * x[pick[0]][usable], shift)
    medians = np.median(np.abs(scales[:, None] * x[None] + shifts[:, None] - y[None]), axis=1)
    best = int(np.argmin(medians))
    scale, shift = float(scales[best]), float(shifts[best])
    for _ in range(iterations):
        residual = scale * x + shift - y
        noise = MAD_TO_SIGMA * float(np.median(np.abs(residual)))
        if noise <= 0:
            break
        u = residual / (TUKEY_C * noise)
        weights = np.where(np.abs(u) < 1, (1 - u * u) ** 2, 0.0)
        if weights.sum() <= 0:
            break
        scale, shift = _weighted_line(x, y, weights)
    residual = scale * x + shift - y
    return Fit(scale, shift, float(np.mean(np.abs(residual) > error)))


def _weighted_line(x: np.ndarray, y: np.ndarray, weights: np.ndarray) -> tuple[float, float]:
    """Weighted least squares; a constant `x` (or one weighted sample) gives scale 0 and the weighted mean."""
    total = weights.sum()
    mx, my = (weights @ x) / total, (weights @ y) / total
    dx = x - mx
    var = weights @ (dx * dx)
    scale = float((weights @ (dx * (y - my))) / var) if var > 1e-12 * total * (mx * mx + 1e-30) else 0.0
    return scale, float(my - scale * mx)


@dataclasses.dataclass
class Stabilizer:
    """Stateful: call it on each frame's (H, W) relative inverse depth, in order; returns (H, W) float32 in clip
    units (see the module doc). All frames of a stream must have one size.

    samples: at most this many pixels (a regular grid) are used for the fit.
    gate: a pixel whose aligned value moved by `gate` of its noise sigmas takes 39% of the move (1 - e^-0.5), by
        twice that 86%, by three times 99%. The noise is relative (see `__call__`): sigma_i = r (|ref_i| + median
        |ref|), r the robust median of |residual| / that level over the fit's samples. 1.0 lags 0-1 frames on the
        panning clips of `benchmarks/video_flicker.py`; 1.5 and 2 smooth more and lag 1-2 frames there.
    cut_error / cut_fraction: a frame with more than `cut_fraction` of its samples off the reference by more than
        `cut_error` (clip units: a tenth of the colour range by default) starts a new scene.
    """

    samples: int = 16384
    gate: float = 1.0
    cut_error: float = 0.1
    cut_fraction: float = 0.5
    noise_floor: float = 1e-3  # identical frames, or a flat reference, must not make the gate infinitely strict
    reference: np.ndarray | None = dataclasses.field(default=None, repr=False)
    scenes: int = 0  # scene starts so far (the first frame is one)

    def __post_init__(self) -> None:
        if not (self.samples >= 16 and self.gate > 0 and self.cut_error > 0 and 0 < self.cut_fraction <= 1):
            raise ValueError(
                f"Stabilizer needs samples >= 16, gate > 0, cut_error > 0 and 0 < cut_fraction <= 1; got {self}"
            )
        if not self.noise_floor > 0:
            raise ValueError(f"Stabilizer needs noise_floor > 0, got {self.noise_floor}")

    def __call__(self, inverse_depth: np.ndarray) -> np.ndarray:
        frame = np.asarray(inverse_depth, np.float32)
        finite = np.isfinite(frame)
        if not finite.all():  # non-finite pixels (a float16 overflow, say) take no part: they keep the reference
            frame = np.where(finite, frame, np.float32(0))
        if self.reference is None or self.reference.shape != frame.shape:
            return self._start(frame, finite)
        stride = max(1, int(np.ceil(np.sqrt(frame.size / self.samples))))
        usable = finite[::stride, ::stride].ravel()
        x, y = frame[::stride, ::stride].ravel()[usable], self.reference[::stride, ::stride].ravel()[usable]
        if x.size == 0 or np.ptp(x) <= 1e-6 * float(np.abs(x).max()):  # a flat frame carries no depth: skip it
            return self.reference.copy()
        fit = fit_scale_shift(x, y, error=self.cut_error)
        if fit.scale <= 0 or fit.outliers > self.cut_fraction:  # nothing of the reference explains it: a new scene
            return self._start(frame, finite)
        # the noise grows with the value (the nearest pixels' std is 1-20% of their value over a static clip, the
        # far ones' a fraction of that): a relative noise, sigma_i = relative * level_i, level = |ref| + median |ref|
        floor = np.float32(np.median(np.abs(y)) + self.noise_floor)
        relative = MAD_TO_SIGMA * float(np.median(np.abs(fit.scale * x + fit.shift - y) / (np.abs(y) + floor)))
        spread = np.abs(self.reference)
        spread += floor
        spread *= np.float32(self.gate * max(relative, self.noise_floor))
        # reference += (1 - exp(-(change / spread)^2 / 2)) * change, in place in float32: a 1080p frame is 2M pixels
        change = frame * np.float32(fit.scale)
        change += np.float32(fit.shift)
        change -= self.reference
        change[~finite] = 0
        kept = np.divide(change, spread, out=spread)
        np.square(kept, out=kept)
        kept *= np.float32(-0.5)
        np.exp(kept, out=kept)  # the share of the change held back
        kept *= change
        self.reference += change
        self.reference -= kept
        return self.reference.copy()

    def _start(self, frame: np.ndarray, finite: np.ndarray) -> np.ndarray:
        """A new scene from `frame`: min-max over its finite pixels -> [0, 1]; non-finite ones at 0 (far)."""
        self.scenes += 1
        values = frame[finite]
        low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
        if high - low <= np.finfo(np.float32).eps * max(abs(high), 1.0):
            self.reference = np.zeros(frame.shape, np.float32)
        else:
            self.reference = np.where(finite, (frame - np.float32(low)) / np.float32(high - low), 0).astype(np.float32)
        return self.reference.copy()
