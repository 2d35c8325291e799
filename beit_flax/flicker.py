"""How much a video's colour pictures flicker, and a guard that keeps the stabilized ones below per-frame min-max.

`flicker` is the measure `benchmarks/video_flicker.py` reports and the README's table uses: over a clip's (H, W, 3)
uint8 pictures P_0..P_n-1,

    flicker = mean_t mean|P_t - P_t-1|  /  mean_t mean P_t        (t = 1..n-1 above, 0..n-1 below)

(the mean frame-to-frame change of the RGB levels over the mean level: a unit-free rate, the same for a dark and a
bright rendering of one change).

`FlickerGuard` makes "stabilized never flickers more than per-frame min-max" (issue 23 item 6) a property of every
clip, whatever the weights, rather than a hope about the aligner. Frame by frame it sees the stabilized map
(`stabilize.Stabilizer`) and the map that `--no-stabilize` colours, and keeps, for the pictures shown (s) and the
min-max ones (m), the summed steps S = sum_t mean|P_t - P_t-1| and the summed levels L = sum_t mean P_t. It shows a
picture only if afterwards

    calm:    S_s + gap <= S_m        gap = mean|P_shown - P_minmax| of this frame
    bright:  L_s >= L_m

Together they give S_s <= S_m and L_s >= L_m, so S_s / L_s <= S_m / L_m, the promise, at every frame (the clip so
far, hence also the whole clip). They can always be kept: showing min-max's picture next keeps both (its step is at
most gap + min-max's step, by the triangle inequality of the mean absolute difference, and it adds min-max's level
to both sums), and the first frame shows min-max's picture. A stabilizer that works leaves slack in both (its steps
are small; its picture's distance from min-max's is bounded by what min-max has wandered), so the guard tries, in
order: the stabilized picture; if it is only too dark, the stabilized map lifted by the least constant that keeps
`bright` (kept for the rest of the clip: a one-time step instead of a darker clip); the largest step from the
picture shown toward the stabilized one; the smallest step from the stabilized picture toward min-max's. Steps and
blends are found by bisection in map units. On the clips of `benchmarks/video_flicker.py` it holds 1-4 of 30
frames, mostly at the start, where min-max has not flickered enough yet to pay for any difference.
"""

from __future__ import annotations

import numpy as np

from beit_flax.images import colormap_lut

BISECTIONS = 8  # the blend weight to 1/256: a finer step would not change a picture by one level in most pixels


def flicker(pictures: list[np.ndarray]) -> float:
    """The clip's flicker (module doc) over its pictures, each (H, W, 3) uint8 of one shape; 0 for under 2."""
    if len(pictures) < 2:
        return 0.0
    pictures = [np.asarray(p, np.float64) for p in pictures]
    steps = [np.abs(a - b).mean() for a, b in zip(pictures[1:], pictures[:-1])]
    level = float(np.mean([p.mean() for p in pictures]))
    return float(np.mean(steps) / level) if level > 0 else 0.0


def unit_levels(unit_map: np.ndarray) -> np.ndarray:
    """(H, W) colour positions -> (H, W) uint8 indices into the colormap, exactly as `images.colorize_unit` takes
    them (clipped to [0, 1], NaN at 0, truncated)."""
    unit = np.nan_to_num(np.array(unit_map, copy=True))  # the same operations in place, in the map's dtype
    np.clip(unit, 0.0, 1.0, out=unit)
    unit *= 255
    return unit.astype(np.uint8)


class FlickerGuard:
    """Stateful: call it on each frame's stabilized map and per-frame min-max map (both (H, W) colour positions,
    [0, 1] the range), in order; returns the map to show ((H, W) float32) and its picture ((H, W, 3) uint8). A new
    frame size starts a new clip."""

    def __init__(self, colormap: str = "inferno") -> None:
        self.lut = colormap_lut(colormap)
        table = self.lut.astype(np.float64)
        # mean over the three channels of |colour_i - colour_j| and of colour_i: a picture's step and level are then
        # the pixel means of table look-ups of its 8-bit colour indices
        self.step_table = np.abs(table[:, None] - table[None]).mean(-1).ravel()
        self.level_table = table.mean(-1)
        self.shown: np.ndarray | None = None  # the last map shown (float32) ...
        self.shown_levels: np.ndarray | None = None  # ... its colour indices, and min-max's of the last frame
        self.minmax_levels: np.ndarray | None = None
        self.sums = np.zeros(4)  # S_stab, L_stab, S_minmax, L_minmax over the clip so far
        self.held = 0  # frames not shown as the stabilizer made them (for tests and benchmarks)
        self.lift = 0.0  # added to the stabilized maps from now on (map units): see the module doc
        self.minmax_level = 0.0  # this frame's min-max level

    def _step(self, levels: np.ndarray, before: np.ndarray) -> float:
        index = levels.astype(np.uint16) << 8
        index |= before
        return float(self.step_table[index].mean())

    def _level(self, levels: np.ndarray) -> float:
        return float(np.bincount(levels.ravel(), minlength=256) @ self.level_table) / levels.size

    def _kept(
        self, levels: np.ndarray, minmax_levels: np.ndarray, minmax_step: float
    ) -> tuple[bool, bool, float, float]:
        """Showing `levels` next: (keeps `calm`, keeps `bright` (module doc), its step, its level)."""
        step, level = self._step(levels, self.shown_levels), self._level(levels)
        gap = self._step(levels, minmax_levels)
        steps, levels_sum, minmax_steps, minmax_levels_sum = self.sums
        minmax_level = self.minmax_level
        tolerance = 1e-12 * (minmax_steps + minmax_step + minmax_levels_sum + minmax_level + 1)  # float sums
        calm = steps + step + gap <= minmax_steps + minmax_step + tolerance
        bright = levels_sum + level >= minmax_levels_sum + minmax_level - tolerance
        return calm, bright, step, level

    def __call__(self, stabilized: np.ndarray, minmax: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        stabilized, minmax = np.asarray(stabilized, np.float32), np.asarray(minmax, np.float32)
        minmax_levels = unit_levels(minmax)
        if self.shown is None or self.shown.shape != stabilized.shape:  # a new clip: from the min-max picture
            self.sums[:], self.lift = 0.0, 0.0
            shown = stabilized if np.array_equal(unit_levels(stabilized), minmax_levels) else minmax
            level = self._level(minmax_levels)
            return self._show(shown, minmax_levels, minmax_levels, 0.0, level, 0.0, level)
        bound = (self._step(minmax_levels, self.minmax_levels), self._level(minmax_levels))
        self.minmax_level = bound[1]
        kept = lambda levels: self._kept(levels, minmax_levels, bound[0])
        both = lambda levels: (lambda k: k[2:] if k[0] and k[1] else None)(kept(levels))
        stabilized = stabilized + np.float32(self.lift) if self.lift else stabilized
        levels = unit_levels(stabilized)
        calm, bright, *shown = kept(levels)
        if calm and bright:
            return self._show(stabilized, levels, minmax_levels, *shown, *bound)
        self.held += 1
        if calm:  # too dark only: lift the colours for good, by as little as keeps `bright`
            low, high = 0.0, 1.0
            for _ in range(BISECTIONS):
                lift = (low + high) / 2
                low, high = (low, lift) if kept(unit_levels(stabilized + np.float32(lift)))[1] else (lift, high)
            lifted = stabilized + np.float32(high)
            if (shown := both(lifted_levels := unit_levels(lifted))) is not None:
                self.lift += high
                return self._show(lifted, lifted_levels, minmax_levels, *shown, *bound)
        if (hold := both(self.shown_levels)) is not None:  # the largest step from the shown picture toward it
            start, end, best = self.shown, stabilized, (self.shown, self.shown_levels, *hold)
        else:  # the smallest step from it toward min-max's picture, which keeps both (module doc)
            start, end, best = minmax, stabilized, (minmax, minmax_levels, *kept(minmax_levels)[2:])
        low, high = 0.0, 1.0  # weight of `end`; `best` is at `low`
        for _ in range(BISECTIONS):
            weight = (low + high) / 2
            blend = start + np.float32(weight) * (end - start)
            if (shown := both(blend_levels := unit_levels(blend))) is not None:
                low, best = weight, (blend, blend_levels, *shown)
            else:
                high = weight
        return self._show(*best[:2], minmax_levels, *best[2:], *bound)

    def _show(
        self,
        shown: np.ndarray,
        levels: np.ndarray,
        minmax_levels: np.ndarray,
        step: float,
        level: float,
        minmax_step: float,
        minmax_level: float,
    ) -> tuple[np.ndarray, np.ndarray]:
        self.sums += step, level, minmax_step, minmax_level
        self.shown, self.shown_levels, self.minmax_levels = shown, levels, minmax_levels
        return shown.copy(), self.lut[levels]
