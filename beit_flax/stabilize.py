"""Temporally stable relative depth for video.

MiDaS predicts affine-invariant inverse depth: every frame comes with its own unknown scale and shift, so per-frame
min-max colouring flickers whenever the lighting or the framing changes (MiDaS #87, #174). `Stabilizer` turns a
stream of such maps into one consistent map per frame:

1. **Alignment.** The frame is fitted to a running reference (the previous stabilized frame) by a robust
   least-squares scale and shift (`fit_scale_shift`: Tukey-weighted IRLS on a fixed grid of pixels, so moving
   objects and newly visible regions do not drag the fit). Only pixels that carry depth order in both maps take
   part: a value that holds a tenth of the frame is a clamp (the ReLU that ends the MiDaS head gives exact zeros,
   and the bicubic resize spreads them into a thin band of small values around 0), and a pixel in a clamp says
   "at least this far", not how far (`clamp_band`). On a map that is mostly zeros the clamped pixels would
   otherwise be the fit (they pin the shift and leave the scale to a few samples: issue 23's runaway scales).
2. **Judgement.** A fit is used only when it is good (`_good`): enough pixels informative in both maps, most of
   the reference's variation explained (robust R^2 = 1 - (MAD sigma of the residual / MAD sigma of the reference)^2
   >= `min_explained`), the aligned frame's spread within a factor `max_spread_step` of the reference's (so one
   frame cannot blow the colours up or crush them to black), and the pixels in the reference's order (rank
   correlation at least `cut_correlation`: a robust fit can explain half of a frame of another scene). A poor fit
   is not used: the frame keeps the previous frame's mapping (its scale and shift) when that puts it on the
   reference's spread, else it is coloured by its own min-max (what `--no-stabilize` shows); either way it becomes
   the new reference.
3. **Scene cuts** need evidence that survives noisy, sparse and mostly-zero maps, twice: the frame's pixels must
   be out of the reference's order (Spearman rank correlation below `cut_correlation`, 0.3, over all sampled pixels,
   the clamped ones tied at their end: ranks do not care about the scale, the shift or a monotone distortion, only
   about which pixel is nearer, and a floor is farther than everything above it whatever its value; one shot scores
   0.65-0.99 frame to frame even from the tests' tiny perturbed model under a 20% change of light, two mostly-zero
   scenes the other way up -0.14..0.02), with enough unclamped pixels in the frame to say so; and the next frame
   must then fit the new frame and still not the old reference. The first frame after a cut is shown min-max (as a
   start would be) and counts as a scene at once; if the next frame goes back to the old reference (a flash,
   something passing the lens), it is withdrawn.
4. **Noise gate.** Per pixel, the aligned frame replaces the reference in proportion to how far it moved relative
   to the frame's residual noise at that level (the noise is relative: near pixels flicker more): changes within
   the noise (lighting flicker, compression) are averaged away, changes well beyond it (motion, cuts) pass through
   at once, so moving content does not lag.

The output is in clip units: the first frame of each scene is min-max normalised to [0, 1] (exactly as MiDaS colours
a single frame), and every later frame is expressed on that frame's scale, so one fixed colour range, [0, 1], holds
for the whole clip (values outside it are clipped only in the picture). `beit_flax.flicker.FlickerGuard` then
bounds what the colour pictures may change from frame to frame.

Sources: the scale-and-shift alignment of affine-invariant depth is MiDaS' own (Ranftl et al., TPAMI 2020, eq. 4,
used there to evaluate); least median of squares is Rousseeuw's (JASA 1984), the biweight Beaton and Tukey's
(Technometrics 1974); leaving clamped (censored) samples out of a fit rather than fitting them as values is the
usual treatment of censored data (Tobin, Econometrica 1958, is the model for keeping them); a cut confirmed over
consecutive frames rather than from one frame difference follows shot-boundary detection's twin-comparison idea
(Zhang, Kankanhalli and Smoliar, Multimedia Systems 1993), here with Spearman's rank correlation (1904) as the
frame difference.
"""

from __future__ import annotations

import dataclasses

import numpy as np

TUKEY_C = 4.685  # Tukey's biweight constant: 95% efficiency under Gaussian noise, zero weight beyond c sigma
MAD_TO_SIGMA = 1.4826  # median absolute deviation -> standard deviation of a Gaussian
START_CANDIDATES = 64  # two-sample lines tried for the robust start: P(no clean pair | 30% moved) = 0.51^64 ~ 1e-19
CLAMP_SHARE = 0.1  # one value held by this share of the samples is a clamp (a float network output repeats no value)
CLAMP_BAND = 0.02  # ... and the values within this share of the frame's range next to it are its resize ringing
MIN_OVERLAP = 64  # fewer pixels informative in both maps than this (or `min_overlap` of the samples): no evidence


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


def clamp_band(samples: np.ndarray) -> tuple[float, float] | None:
    """The closed interval of raw values that a clamp covers in a frame's 1-D finite samples, or None.

    A clamp is one exact value held by `CLAMP_SHARE` of the samples. It is a floor (ReLU's 0) when it sits nearer
    the bottom of the range (1st to 99th percentile) than the top, else a ceiling; the band runs from it outwards
    (the resize's undershoot below a floor) and `CLAMP_BAND` of the range inwards (the ringing next to it)."""
    if samples.size == 0:
        return None
    values, counts = np.unique(samples, return_counts=True)
    top = int(counts.argmax())
    if counts[top] < CLAMP_SHARE * samples.size:
        return None
    clamp = float(values[top])
    low, high = (float(v) for v in np.quantile(samples, [0.01, 0.99]))
    if clamp - low <= high - clamp:
        return -np.inf, clamp + CLAMP_BAND * (high - clamp)
    return clamp - CLAMP_BAND * (clamp - low), np.inf


def rank_correlation(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rank correlation of two 1-D samples (ties share their mean rank: scipy's `rankdata`); 0 when
    either is constant."""
    from scipy.stats import rankdata  # scipy comes with jax

    rx, ry = rankdata(x), rankdata(y)
    rx -= rx.mean()
    ry -= ry.mean()
    norm = np.sqrt((rx @ rx) * (ry @ ry))
    return float(rx @ ry / norm) if norm > 0 else 0.0


def robust_sigma(values: np.ndarray) -> float:
    return MAD_TO_SIGMA * float(np.median(np.abs(values - np.median(values)))) if values.size else 0.0


@dataclasses.dataclass
class _Scene:
    """A reference: the map in clip units, which of its pixels are clamped (None: none) and at which end (`end`:
    -inf a floor, +inf a ceiling), and the mapping (raw -> clip units) that made it last."""

    values: np.ndarray
    clamped: np.ndarray | None
    end: float
    scale: float
    shift: float

    def ranked(self, grid: tuple[slice, slice]) -> np.ndarray:
        return ranked(self.values[grid].ravel(), None if self.clamped is None else self.clamped[grid].ravel(), self.end)


def ranked(samples: np.ndarray, clamped: np.ndarray | None, end: float) -> np.ndarray:
    """Samples for a rank correlation: the clamped ones tied at their end (a floor is farther than every pixel
    above it: its order is known, its value is not)."""
    return samples if clamped is None else np.where(clamped, end, samples)


@dataclasses.dataclass
class Stabilizer:
    """Stateful: call it on each frame's (H, W) relative inverse depth, in order; returns (H, W) float32 in clip
    units (see the module doc). All frames of a stream must have one size.

    samples: at most this many pixels (a regular grid) are used for the fit.
    gate: a pixel whose aligned value moved by `gate` of its noise sigmas takes 39% of the move (1 - e^-0.5), by
        twice that 86%, by three times 99%. The noise is relative (see `__call__`): sigma_i = r (|ref_i| + median
        |ref|), r the robust median of |residual| / that level over the fit's samples. 1.0 lags 0-1 frames on the
        panning clips of `benchmarks/video_flicker.py`; 1.5 and 2 smooth more and lag 1-2 frames there.
    min_explained / max_spread_step / min_overlap: when a fit is good enough to use (module doc, step 2).
    cut_correlation: the rank correlation below which a frame is evidence of a scene cut (step 3).
    """

    samples: int = 16384
    gate: float = 1.0
    min_explained: float = 0.5
    max_spread_step: float = 1.5
    min_overlap: float = 0.01
    cut_correlation: float = 0.3
    noise_floor: float = 1e-3  # identical frames, or a flat reference, must not make the gate infinitely strict
    starts: int = 0  # scene starts so far: the first frame, a new frame size, each confirmed cut
    reference: _Scene | None = dataclasses.field(default=None, repr=False)
    pending: _Scene | None = dataclasses.field(default=None, repr=False)  # a cut seen once, not yet confirmed

    def __post_init__(self) -> None:
        if not (self.samples >= 16 and self.gate > 0 and self.noise_floor > 0 and self.max_spread_step > 1):
            raise ValueError(f"Stabilizer needs samples >= 16, gate > 0, noise_floor > 0, max_spread_step > 1: {self}")
        if not (0 <= self.min_explained < 1 and 0 <= self.min_overlap < 1 and -1 <= self.cut_correlation < 1):
            raise ValueError(
                f"Stabilizer needs 0 <= min_explained < 1, 0 <= min_overlap < 1, -1 <= cut_correlation < 1: {self}"
            )

    @property
    def scenes(self) -> int:
        """Scenes so far: the confirmed starts, plus a cut seen on the last frame and not yet confirmed."""
        return self.starts + (self.pending is not None)

    def __call__(self, inverse_depth: np.ndarray) -> np.ndarray:
        frame = np.asarray(inverse_depth, np.float32)
        finite = np.isfinite(frame)
        if not finite.all():  # non-finite pixels (a float16 overflow, say) take no part: they keep the reference
            frame = np.where(finite, frame, np.float32(0))
        stride = max(1, int(np.ceil(np.sqrt(frame.size / self.samples))))
        grid = (slice(None, None, stride), slice(None, None, stride))
        x_all, usable = frame[grid].ravel(), finite[grid].ravel()
        band = clamp_band(x_all[usable])
        clamped = None if band is None else (frame >= band[0]) & (frame <= band[1])
        end = 0.0 if band is None else -np.inf if band[0] == -np.inf else np.inf
        if self.reference is None or self.reference.values.shape != frame.shape:
            self.starts += 1
            self.reference, self.pending = self._start(frame, finite, clamped, end), None
            return self.reference.values.copy()
        if not usable.any() or np.ptp(x_all[usable]) <= 1e-6 * float(np.abs(x_all[usable]).max()):
            return self.reference.values.copy()  # a flat frame (a fade to black) carries no depth: skip it
        informative = usable if clamped is None else usable & ~clamped[grid].ravel()
        x_ranked = ranked(x_all, None if clamped is None else clamped[grid].ravel(), end)[usable]
        old, enough = self.reference, max(MIN_OVERLAP, self.min_overlap * usable.size)
        order = rank_correlation(x_ranked, old.ranked(grid)[usable])  # all usable pixels, the clamped tied
        fit, x, y = self._fit(frame, informative, old, grid)
        if fit is not None and x.size >= enough and self._good(fit, x, y, order):
            self.pending = None
            return self._follow(frame, finite, clamped, end, fit, x_all[usable], old.values[grid].ravel()[usable])
        if order < self.cut_correlation and informative.sum() >= enough:  # evidence of a cut (if the frame has depth)
            if self.pending is not None:
                fit, x, y = self._fit(frame, informative, self.pending, grid)
                again = rank_correlation(x_ranked, self.pending.ranked(grid)[usable])
                if fit is not None and x.size >= enough and self._good(fit, x, y, again):  # the cut is confirmed
                    self.reference, self.pending = self.pending, None
                    self.starts += 1
                    y_all = self.reference.values[grid].ravel()[usable]
                    return self._follow(frame, finite, clamped, end, fit, x_all[usable], y_all)
            self.pending = self._start(frame, finite, clamped, end)
            return self.pending.values.copy()
        self.pending = None  # the old scene goes on, through a frame the fit cannot explain: use no fit
        mapped = np.where(finite, frame * np.float32(old.scale) + np.float32(old.shift), old.values)
        if not self._same_spread(mapped[grid].ravel()[informative], old, grid):
            self.reference = self._start(frame, finite, clamped, end)  # per-frame colours, not counted as a scene
        else:
            self.reference = _Scene(mapped.astype(np.float32), clamped, end, old.scale, old.shift)
        return self.reference.values.copy()

    def _fit(
        self, frame: np.ndarray, informative: np.ndarray, scene: _Scene, grid: tuple[slice, slice]
    ) -> tuple[Fit | None, np.ndarray, np.ndarray]:
        """The robust fit of the frame's samples to `scene` over the pixels informative in both (None when too few
        for a line), and those samples (x raw, y clip units)."""
        both = informative if scene.clamped is None else informative & ~scene.clamped[grid].ravel()
        x, y = frame[grid].ravel()[both], scene.values[grid].ravel()[both]
        return (fit_scale_shift(x, y) if x.size >= MIN_OVERLAP else None), x, y

    def _good(self, fit: Fit, x: np.ndarray, y: np.ndarray, order: float) -> bool:
        """Module doc, step 2, over enough samples informative in both (the caller's check): the variance explained,
        the spread kept, and the pixels in order (rank correlation `order` at least `cut_correlation`: a robust fit
        can explain half of a frame of another scene)."""
        if fit.scale <= 0 or order < self.cut_correlation:
            return False
        spread = robust_sigma(y)
        if not spread > 0:
            return False
        noise = MAD_TO_SIGMA * float(np.median(np.abs(fit.scale * x + fit.shift - y)))
        kept = fit.scale * robust_sigma(x) / spread
        return (
            1 - (noise / spread) ** 2 >= self.min_explained and 1 / self.max_spread_step <= kept <= self.max_spread_step
        )

    def _same_spread(self, aligned: np.ndarray, scene: _Scene, grid: tuple[slice, slice]) -> bool:
        """Does a frame mapped into clip units keep the reference's spread (within `max_spread_step`)? Too few
        samples to tell (`MIN_OVERLAP`): yes, nothing speaks against the mapping."""
        if aligned.size < MIN_OVERLAP:
            return True
        values = scene.values[grid].ravel() if scene.clamped is None else scene.values[grid][~scene.clamped[grid]]
        spread = robust_sigma(values)
        kept = robust_sigma(aligned) / spread if spread > 0 else 0.0
        return 1 / self.max_spread_step <= kept <= self.max_spread_step

    def _follow(
        self,
        frame: np.ndarray,
        finite: np.ndarray,
        clamped: np.ndarray | None,
        end: float,
        fit: Fit,
        x: np.ndarray,
        y: np.ndarray,
    ) -> np.ndarray:
        """Step 4: the reference moves toward the aligned frame, per pixel, by how far it moved beyond the noise.
        `x`, `y`: the frame's and the reference's samples, all of them (the clamped too: the noise model below was
        set over whole frames, and a steady floor is part of what the frame's noise is)."""
        reference = self.reference.values
        # the noise grows with the value (the nearest pixels' std is 1-20% of their value over a static clip, the
        # far ones' a fraction of that): a relative noise, sigma_i = relative * level_i, level = |ref| + median |ref|
        floor = np.float32(np.median(np.abs(y)) + self.noise_floor)
        relative = MAD_TO_SIGMA * float(np.median(np.abs(fit.scale * x + fit.shift - y) / (np.abs(y) + floor)))
        spread = np.abs(reference)
        spread += floor
        spread *= np.float32(self.gate * max(relative, self.noise_floor))
        # reference += (1 - exp(-(change / spread)^2 / 2)) * change, in place in float32: a 1080p frame is 2M pixels
        change = frame * np.float32(fit.scale)
        change += np.float32(fit.shift)
        change -= reference
        change[~finite] = 0
        if clamped is not None and self.reference.clamped is not None:  # clamped then and now: nothing new is known
            change[clamped & self.reference.clamped] = 0
        kept = np.divide(change, spread, out=spread)
        np.square(kept, out=kept)
        kept *= np.float32(-0.5)
        np.exp(kept, out=kept)  # the share of the change held back
        kept *= change
        reference += change
        reference -= kept
        self.reference = _Scene(reference, clamped, end, fit.scale, fit.shift)
        return reference.copy()

    @staticmethod
    def _start(frame: np.ndarray, finite: np.ndarray, clamped: np.ndarray | None, end: float) -> _Scene:
        """A new scene from `frame`: min-max over its finite pixels -> [0, 1]; non-finite ones at 0 (far)."""
        values = frame[finite]
        low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
        if high - low <= np.finfo(np.float32).eps * max(abs(high), 1.0):
            return _Scene(np.zeros(frame.shape, np.float32), clamped, end, 0.0, 0.0)
        unit = np.where(finite, (frame - np.float32(low)) / np.float32(high - low), 0).astype(np.float32)
        return _Scene(unit, clamped, end, 1 / (high - low), -low / (high - low))
