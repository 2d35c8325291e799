#!/usr/bin/env python
"""Flicker and lag of `beit-depth video`'s stabilized colouring against per-frame min-max, on generated clips.

    python examples/finetune.py --out runs/ft          # a model that has learned depth on the generated rooms
    python benchmarks/video_flicker.py --weights runs/ft/finetuned.msgpack --strip assets/video_strip.png

Clips (`beit_flax.training.scenes.render_clip`, one random room per seed, 30 frames of 256x192): `static` (fixed
camera, each frame's brightness x0.8-1.2), `jitter` (the same plus a 0-8 px camera shake per frame), `pan` (the
same lighting, the camera panning 150 px over the clip, no shake).

Each clip runs through `beit_flax.video.depth_frames`, the frames `beit-depth video` encodes, three ways:
`minmax` (--no-stabilize: MiDaS' per-frame min-max), `plain` (a plain least-squares scale and shift of each frame
to the previous aligned frame, coloured over the first frame's range: the baseline of issue 17), and `stabilized`
(the default). Flicker (`beit_flax.flicker.flicker`) = mean over consecutive frames of mean |picture_t - picture_t-1|
(RGB levels) / mean picture level; `gain` = minmax flicker / that method's. `scenes`: the scenes the stabilizer
found (1: no spurious cut); `held`: the frames the flicker guard did not show as the stabilizer made them.
Lag (pan clips): the same pan rendered without the lighting flicker is run through the model; the lag is the k in
0..4 for which the stabilized map of frame t is nearest (RMSE after a least-squares scale and shift) to that clean
clip's map of frame t - k; 0 = no lag. One JSON line per clip, then a summary line (its `lowest_stabilized_gain`
is never below 1: `FlickerGuard`'s promise).

--strip writes a PNG of the pan clip of the first seed: input frames (top), per-frame min-max (middle), stabilized
(bottom), at five times.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
sys.path.insert(0, str(ROOT / "benchmarks"))

from machine import cpu_name  # noqa: E402

from beit_flax.flicker import FlickerGuard, flicker  # noqa: E402
from beit_flax.images import colorize_unit, depth_range, encode_png  # noqa: E402
from beit_flax.predictor import Predictor  # noqa: E402
from beit_flax.stabilize import Stabilizer  # noqa: E402
from beit_flax.training.scenes import render_clip  # noqa: E402
from beit_flax.video import depth_frames  # noqa: E402

CLIPS = {
    "static": {"brightness": (0.8, 1.2)},
    "jitter": {"brightness": (0.8, 1.2), "jitter_px": 8},
    "pan": {"brightness": (0.8, 1.2), "pan_px": 150},
}


def plain_running_alignment(raw: list[np.ndarray]) -> list[np.ndarray]:
    """The baseline: least squares of each frame onto the previous aligned one, the first frame min-max."""
    aligned = [depth_range(raw[0]).astype(np.float64)]
    for frame in raw[1:]:
        design = np.stack([frame.ravel(), np.ones(frame.size)], axis=1).astype(np.float64)
        coef = np.linalg.lstsq(design, aligned[-1].ravel(), rcond=None)[0]
        aligned.append((design @ coef).reshape(frame.shape))
    return aligned


def lag_frames(stabilized: list[np.ndarray], clean: list[np.ndarray], most: int = 4) -> int:
    def fitted_rmse(ours: np.ndarray, truth: np.ndarray) -> float:
        design = np.stack([ours.ravel(), np.ones(ours.size)], axis=1).astype(np.float64)
        coef = np.linalg.lstsq(design, truth.ravel(), rcond=None)[0]
        return float(np.sqrt(np.mean((design @ coef - truth.ravel()) ** 2)))

    rmse = [
        np.mean([fitted_rmse(stabilized[t], clean[t - k]) for t in range(most + 1, len(stabilized))])
        for k in range(most + 1)
    ]
    return int(np.argmin(rmse))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", required=True, help="a trained model (examples/finetune.py's finetuned.msgpack)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--frames", type=int, default=30)
    parser.add_argument("--strip", type=Path, help="write the pan clip's frame strip here (PNG)")
    args = parser.parse_args()
    predictor = Predictor(args.weights)
    if not predictor.output.up_to_scale:
        parser.error(f"stabilization is for relative depth; {args.weights} gives {predictor.output.units}")
    gains: dict[str, dict[str, list[float]]] = {}
    lags = []
    start = time.perf_counter()
    for kind, options in CLIPS.items():
        for seed in args.seeds:
            clip, _ = render_clip(np.random.default_rng(seed), 192, 256, args.frames, **options)
            per_frame = [(depth, picture) for _, depth, picture in depth_frames(predictor, clip, stabilize=False)]
            stabilizer, guard = Stabilizer(), FlickerGuard()
            stabilized = [
                (depth, picture)
                for _, depth, picture in depth_frames(predictor, clip, stabilizer=stabilizer, guard=guard)
            ]
            raw = [depth for depth, _ in per_frame]
            pictures = {
                "minmax": [picture for _, picture in per_frame],
                "plain": [colorize_unit(a) for a in plain_running_alignment(raw)],
                "stabilized": [picture for _, picture in stabilized],
            }
            base = flicker(pictures["minmax"])
            row = {"clip": kind, "seed": seed, "frames": args.frames, "scenes": stabilizer.scenes, "held": guard.held}
            for method, frames in pictures.items():
                value = flicker(frames)
                gains.setdefault(kind, {}).setdefault(method, []).append(base / value)
                row[method] = {"flicker": round(value, 5), "gain": round(base / value, 2)}
            if kind == "pan":
                steady = {**options, "brightness": (1.0, 1.0)}  # the same camera path (the same random draws)
                clean_clip, _ = render_clip(np.random.default_rng(seed), 192, 256, args.frames, **steady)
                clean = [depth for _, depth, _ in depth_frames(predictor, clean_clip, stabilize=False)]
                row["lag_frames"] = lag_frames([d for d, _ in stabilized], clean)
                lags.append(row["lag_frames"])
                if args.strip is not None and seed == args.seeds[0]:
                    times = np.linspace(0, args.frames - 1, 5).round().astype(int)
                    rows = [clip[times], np.stack(pictures["minmax"])[times], np.stack(pictures["stabilized"])[times]]
                    strip = np.concatenate([np.concatenate(list(r), axis=1) for r in rows], axis=0)
                    args.strip.write_bytes(encode_png(strip[::2, ::2]))
            print(json.dumps(row), flush=True)
    summary = {
        "mean_gain": {kind: {m: round(float(np.mean(g)), 2) for m, g in by.items()} for kind, by in gains.items()},
        "lowest_stabilized_gain": round(min(min(by["stabilized"]) for by in gains.values()), 2),  # >= 1: the promise
        "pan_lag_frames": lags,
        "weights": str(args.weights),
        "cpu": cpu_name(),
        "seconds": round(time.perf_counter() - start, 1),
    }
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
