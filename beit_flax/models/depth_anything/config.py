"""The configuration of a Depth Anything model (V1 and V2: DINOv2 + the Depth Anything DPT head), and the released
presets.

Field names follow the original code (DepthAnything/Depth-Anything-V2 `depth_anything_v2/dpt.py`, `dinov2.py`;
LiheYoung/Depth-Anything `depth_anything/dpt.py`); the release table is in `depth-anything.md` of the references.
V1 and V2 have the same architecture: V1 taps the last four blocks, V2 spread-out ones. A metric model (V2's
Hypersim / Virtual KITTI fine-tunes) ends in a sigmoid scaled by `max_depth` meters; a relative one in ReLU.
How the model runs (compute dtype, remat, attention) is not configuration: those are module attributes.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from beit_flax.models.config_checks import is_int, size_problems

PATCH_SIZE = 14  # the head resizes to 14 x the patch grid (the original's hard-coded `patch_h * 14`)
FFNS = ("mlp", "swiglu")  # DINOv2's feed-forward: fc1 / GELU / fc2, or SwiGLU (ViT-G)

# Bounds on every field, checked whenever a config is made (weights file, checkpoint, config.json or code), so that a
# small file cannot make us trace or allocate without end; far above every released model (ViT-G: 1536 x 40).
MAX_DEPTH = 64
MAX_WIDTH = 2048
MAX_HEADS = 64
MAX_GRID = 128  # the position embedding's training grid side; released: 37 (518 / 14)
MAX_CHANNELS = 8192  # FFN hidden, head and fusion channels; released: at most 6144 (ViT-G's hidden, 4 x 1536)
MAX_NET_SIZE = 8192
MAX_LAYER_NORM_EPS = 1e-3
MAX_DEPTH_M = 1000.0  # a metric model's range in meters; released: 20 (Hypersim), 80 (Virtual KITTI)


@dataclasses.dataclass(frozen=True)
class DepthAnythingConfig:
    """Architecture of a Depth Anything model.

    Attributes:
      width, depth, num_heads: the DINOv2 ViT (embed_dim, blocks, heads); patch_size 14.
      pos_grid: side of the square patch grid the position embedding was trained for (37: 518 x 518).
      ffn: "mlp" (ViT-S/B/L) or "swiglu" (ViT-G); ffn_channels: its hidden width (4C; SwiGLU: DINOv2's rounding).
      taps: 0-based blocks whose (normed) outputs the head reads: V2 (2, 5, 8, 11) for S / B, (4, 11, 17, 23) L,
        (9, 19, 29, 39) G; V1 the last four.
      features: the fusion channels (64, 128, 256, 384); out_channels: the four reassembled maps' channels.
      use_clstoken: the cls-token readout projection (False in every released model).
      max_depth: None for relative inverse depth (ReLU), else meters: the output is sigmoid x max_depth.
      layer_norm_eps: 1e-6 (DINOv2); net_size: `infer_image`'s input_size, 518.
    """

    width: int = 1024
    depth: int = 24
    num_heads: int = 16
    patch_size: int = PATCH_SIZE
    pos_grid: int = 37
    ffn: str = "mlp"
    ffn_channels: int = 4096
    taps: tuple[int, int, int, int] = (4, 11, 17, 23)
    features: int = 256
    out_channels: tuple[int, int, int, int] = (256, 512, 1024, 1024)
    use_clstoken: bool = False
    max_depth: float | None = None
    layer_norm_eps: float = 1e-6
    net_size: int = 518

    def __post_init__(self) -> None:
        for name in ("taps", "out_channels"):  # lists arrive from JSON / msgpack; flax hashes module fields
            if isinstance(getattr(self, name), (list, tuple)):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        if isinstance(self.max_depth, int) and not isinstance(self.max_depth, bool):
            object.__setattr__(self, "max_depth", float(self.max_depth))
        problems = _problems(self)
        if problems:
            raise ValueError("invalid DepthAnythingConfig: " + "; ".join(problems))

    @property
    def metric(self) -> bool:
        return self.max_depth is not None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON / msgpack types (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, fields: dict[str, Any]) -> DepthAnythingConfig:
        """Inverse of `to_dict`; every field must be present (a partial config would silently mean another model)."""
        if not isinstance(fields, dict):
            raise ValueError(f"config must be a dict of fields, got a {type(fields).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown, missing = sorted(map(str, set(fields) - known)), sorted(known - set(fields))
        if unknown or missing:
            raise ValueError(f"config fields: unknown {unknown}, missing {missing}")
        return cls(**fields)

    def replace(self, **changes: Any) -> DepthAnythingConfig:
        return dataclasses.replace(self, **changes)


def swiglu_channels(width: int) -> int:
    """DINOv2's SwiGLU hidden width for mlp_ratio 4: int(4C * 2 / 3) rounded up to a multiple of 8."""
    return (int(4 * width * 2 / 3) + 7) // 8 * 8


def _problems(config: DepthAnythingConfig) -> list[str]:
    """Every way `config` breaks the types, bounds and relations of its fields (empty if none)."""
    problems = []
    for name in ("taps", "out_channels"):
        value = getattr(config, name)
        if not isinstance(value, tuple) or len(value) != 4:
            problems.append(f"{name} must be a list of 4 ints, got {value!r}")
    four = lambda name: getattr(config, name) if isinstance(getattr(config, name), tuple) else ()
    sizes = {
        "width": (config.width, MAX_WIDTH),
        "depth": (config.depth, MAX_DEPTH),
        "num_heads": (config.num_heads, MAX_HEADS),
        "pos_grid": (config.pos_grid, MAX_GRID),
        "ffn_channels": (config.ffn_channels, MAX_CHANNELS),
        "features": (config.features, MAX_CHANNELS),
        "net_size": (config.net_size, MAX_NET_SIZE),
        **{f"out_channels[{i}]": (v, MAX_CHANNELS) for i, v in enumerate(four("out_channels"))},
    }
    problems += size_problems(sizes)
    if config.patch_size != PATCH_SIZE:
        problems.append(f"patch_size must be {PATCH_SIZE} (the head resizes to 14 x the patch grid)")
    if config.ffn not in FFNS:
        problems.append(f"ffn must be one of {FFNS}, got {config.ffn!r}")
    if not isinstance(config.use_clstoken, bool):
        problems.append(f"use_clstoken must be a bool, got {config.use_clstoken!r}")
    m = config.max_depth
    if m is not None and not (isinstance(m, float) and 0 < m <= MAX_DEPTH_M):
        problems.append(f"max_depth must be None (relative) or meters in (0, {MAX_DEPTH_M:g}], got {m!r}")
    eps = config.layer_norm_eps
    if not (isinstance(eps, float) and 0 < eps <= MAX_LAYER_NORM_EPS):
        problems.append(f"layer_norm_eps must be a float in (0, {MAX_LAYER_NORM_EPS}], got {eps!r}")
    if not problems and config.width % config.num_heads:
        problems.append(f"width {config.width} is not divisible by num_heads {config.num_heads}")
    taps = four("taps")
    if taps and not (all(is_int(t) for t in taps) and list(taps) == sorted(set(taps))):
        problems.append(f"taps must be 4 increasing block indices, got {list(taps)}")
    elif taps and is_int(config.depth) and not 0 <= taps[0] <= taps[-1] < config.depth:
        problems.append(f"taps {list(taps)} must be blocks of 0..{config.depth - 1}")
    return problems


# encoder -> (width, depth, heads, ffn, ffn_channels, features, out_channels, V2 taps), DPT head sizes as released
ENCODERS: dict[str, tuple[int, int, int, str, int, int, tuple[int, ...], tuple[int, ...]]] = {
    "vits": (384, 12, 6, "mlp", 1536, 64, (48, 96, 192, 384), (2, 5, 8, 11)),
    "vitb": (768, 12, 12, "mlp", 3072, 128, (96, 192, 384, 768), (2, 5, 8, 11)),
    "vitl": (1024, 24, 16, "mlp", 4096, 256, (256, 512, 1024, 1024), (4, 11, 17, 23)),
    "vitg": (1536, 40, 24, "swiglu", swiglu_channels(1536), 384, (1536,) * 4, (9, 19, 29, 39)),
}


def encoder_config(encoder: str, *, v1: bool = False, max_depth: float | None = None) -> DepthAnythingConfig:
    """The released config of `encoder` ("vits", "vitb", "vitl", "vitg"): V2's taps, or V1's (the last four)."""
    width, depth, heads, ffn, ffn_channels, features, out_channels, taps = ENCODERS[encoder]
    return DepthAnythingConfig(
        width=width,
        depth=depth,
        num_heads=heads,
        ffn=ffn,
        ffn_channels=ffn_channels,
        taps=tuple(range(depth - 4, depth)) if v1 else taps,
        features=features,
        out_channels=out_channels,
        max_depth=max_depth,
    )


SIZES = {"small": "vits", "base": "vitb", "large": "vitl"}
METRIC_MAX_DEPTH = {"hypersim": 20.0, "vkitti": 80.0}  # the metric fine-tunes: indoor and outdoor
METRIC_SCENES = {"indoor": "hypersim", "outdoor": "vkitti"}

PRESETS: dict[str, DepthAnythingConfig] = {
    **{f"depth_anything_v2_{size}": encoder_config(enc) for size, enc in SIZES.items()},
    "depth_anything_v2_giant": encoder_config("vitg"),
    **{
        f"depth_anything_v2_metric_{scene}_{size}": encoder_config(enc, max_depth=METRIC_MAX_DEPTH[dataset])
        for scene, dataset in METRIC_SCENES.items()
        for size, enc in SIZES.items()
    },
    **{f"depth_anything_v1_{size}": encoder_config(enc, v1=True) for size, enc in SIZES.items()},
}

# A tiny model for tests and examples: 2 heads of 64 (DINOv2's head size, which the release files imply), a 4 x 4
# position grid, 4 blocks all tapped
TINY = DepthAnythingConfig(
    width=128,
    depth=4,
    num_heads=2,
    pos_grid=4,
    ffn_channels=256,
    taps=(0, 1, 2, 3),
    features=16,
    out_channels=(8, 16, 32, 32),
    net_size=56,
)
