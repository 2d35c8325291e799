"""The one configuration of a BEiT-DPT model (its architecture), and the three released presets.

Field names follow the DPT paper (Ranftl et al. 2021, figure 1) and MiDaS v3.1 (`midas/dpt_depth.py`,
`midas/backbones/beit.py`; the released models' table is in the MiDaS v3.1 README). How the model runs (compute
dtype, remat, scan, attention) is not configuration: those are attributes of the `DPT` module.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from beit_flax.models.config_checks import is_int, size_problems
from beit_flax.models.dpt.relative_position import table_rows


@dataclasses.dataclass(frozen=True)
class DPTConfig:
    """Architecture of a MiDaS v3.1 BEiT-DPT model.

    Attributes:
      width: token channels C of the BEiT encoder.
      depth: number of transformer blocks.
      num_heads: attention heads per block (C must be divisible by it).
      patch_size: side of the square patches; 16 (`PATCH_SIZE`), the only size the DPT decoder fits.
      train_grid: (gh, gw) patch grid the relative-position tables were trained for; inputs of any other grid get a
        resized table (see `relative_position.py`).
      hooks: 0-based indices of the four blocks whose outputs are reassembled (DPT figure 1, "Reassemble_s").
      reassemble_channels: D_1..D_4, channels of the four reassembled feature maps (x4, x2, x1, x0.5 resolution).
      fusion_channels: channels of the fusion stage (256 in every released model).
      head_channels: channels of the head's last hidden conv (32 in every released model).
      layer_norm_eps: LayerNorm epsilon (1e-6 in MiDaS/timm; transformers' BEiT default is 1e-12).
      net_size: the side the model was trained at; preprocessing resizes towards it.
    """

    width: int = 1024
    depth: int = 24
    num_heads: int = 16
    patch_size: int = 16
    train_grid: tuple[int, int] = (32, 32)
    hooks: tuple[int, int, int, int] = (5, 11, 17, 23)
    reassemble_channels: tuple[int, int, int, int] = (256, 512, 1024, 1024)
    fusion_channels: int = 256
    head_channels: int = 32
    layer_norm_eps: float = 1e-6
    net_size: int = 512

    def __post_init__(self) -> None:
        # Lists arrive from JSON / msgpack; keep the dataclass hashable (flax modules hash their fields).
        for name in ("train_grid", "hooks", "reassemble_channels"):
            if isinstance(getattr(self, name), (list, tuple)):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        problems = _problems(self)
        if problems:
            raise ValueError("invalid DPTConfig: " + "; ".join(problems))

    @property
    def table_rows(self) -> int:
        """Rows of each block's relative-position table: (2gh-1)(2gw-1) offsets + 3 cls entries."""
        return table_rows(self.train_grid)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON / msgpack types (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, fields: dict[str, Any]) -> DPTConfig:
        """Inverse of `to_dict`; every field must be present (a partial config would silently mean another model).

        Files written before the compute dtype became a module attribute also store "dtype"; it is ignored.
        """
        if not isinstance(fields, dict):
            raise ValueError(f"config must be a dict of fields, got a {type(fields).__name__}")
        fields = {k: v for k, v in fields.items() if k not in LEGACY_FIELDS}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown, missing = sorted(map(str, set(fields) - known)), sorted(known - set(fields))
        if unknown or missing:
            raise ValueError(f"config fields: unknown {unknown}, missing {missing}")
        return cls(**fields)

    def replace(self, **changes: Any) -> DPTConfig:
        return dataclasses.replace(self, **changes)


# Fields that older weights files store but that are no longer architecture (read and ignored).
LEGACY_FIELDS = frozenset({"dtype"})


# Bounds on every field, checked whenever a config is made (from a weights file, a checkpoint, config.json or code),
# so that a small file cannot make us trace or allocate without end. Each is far above every released model.
MAX_DEPTH = 64  # blocks; released: 12, 24. Shapes are traced block by block (~30 ms, 0.35 MB each): at most ~2 s
MAX_WIDTH = 2048  # token channels; released: 768, 1024 (the widest ViTs in use: ViT-G/14 1664)
MAX_HEADS = 64  # released: 12, 16; each head is a column of every block's relative-position table
# The decoder's upsampling is fixed at 16x the patch grid (reassemble x4, fusion x2, head x2): with any other patch
# size the depth map would not come out at the input's size.
PATCH_SIZE = 16
MAX_GRID = 128  # patches per side of the training grid; released: 24, 32; tables have (2g-1)^2 + 3 rows
MAX_CHANNELS = 2048  # reassemble / fusion / head channels; released: at most 1024; 3x3 convs hold 9 c^2 weights
MAX_NET_SIZE = 8192  # released: 384, 512; 8192^2 is the default pixel limit (transforms.DEFAULT_MAX_PIXELS)
# LayerNorm epsilon only keeps the division by the standard deviation finite; released: 1e-6 (MiDaS, timm) and
# transformers' 1e-12. NaN, 0 or a negative value gives NaN depth; above 1e-3 it changes the normalisation itself.
MAX_LAYER_NORM_EPS = 1e-3
# The largest weights file of any config within these bounds is `files.MAX_WEIGHTS_BYTES` (test_config.py checks it
# against the largest one); larger inputs are refused before they are read.


def _problems(config: DPTConfig) -> list[str]:
    """Every way `config` breaks the types, bounds and relations of its fields (empty if none)."""
    problems = []
    for name, n in (("train_grid", 2), ("hooks", 4), ("reassemble_channels", 4)):
        value = getattr(config, name)
        if not isinstance(value, tuple) or len(value) != n:
            problems.append(f"{name} must be a list of {n} ints, got {value!r}")
    tuples = lambda name: getattr(config, name) if isinstance(getattr(config, name), tuple) else ()
    sizes = {
        "width": (config.width, MAX_WIDTH),
        "depth": (config.depth, MAX_DEPTH),
        "num_heads": (config.num_heads, MAX_HEADS),
        "patch_size": (config.patch_size, PATCH_SIZE),
        "fusion_channels": (config.fusion_channels, MAX_CHANNELS),
        "head_channels": (config.head_channels, MAX_CHANNELS),
        "net_size": (config.net_size, MAX_NET_SIZE),
        **{f"train_grid[{i}]": (v, MAX_GRID) for i, v in enumerate(tuples("train_grid"))},
        **{f"reassemble_channels[{i}]": (v, MAX_CHANNELS) for i, v in enumerate(tuples("reassemble_channels"))},
    }
    problems += size_problems(sizes)
    if is_int(config.patch_size) and 0 < config.patch_size < PATCH_SIZE:
        problems.append(
            f"patch_size must be {PATCH_SIZE} (the DPT decoder upsamples the patch grid 16x), got {config.patch_size}"
        )
    if not problems and config.width % config.num_heads:
        problems.append(f"width {config.width} is not divisible by num_heads {config.num_heads}")
    hooks = tuples("hooks")
    if len(hooks) == 4 and not (
        all(is_int(h) for h in hooks)
        and list(hooks) == sorted(set(hooks))
        and is_int(config.depth)
        and all(0 <= h < config.depth for h in hooks)
    ):
        problems.append(f"hooks {hooks} must be increasing block indices in [0, depth={config.depth})")
    eps = config.layer_norm_eps
    if not (isinstance(eps, (int, float)) and not isinstance(eps, bool) and 0 < eps <= MAX_LAYER_NORM_EPS):
        problems.append(f"layer_norm_eps must be a number in (0, {MAX_LAYER_NORM_EPS:g}], got {eps!r}")
    return problems


PRESETS: dict[str, DPTConfig] = {
    "dpt_beit_large_512": DPTConfig(),
    "dpt_beit_large_384": DPTConfig(train_grid=(24, 24), net_size=384),
    "dpt_beit_base_384": DPTConfig(
        width=768,
        depth=12,
        num_heads=12,
        train_grid=(24, 24),
        hooks=(2, 5, 8, 11),
        reassemble_channels=(96, 192, 384, 768),
        net_size=384,
    ),
}

# Not a release: the smallest config that exercises every part (4 blocks, each hooked; a 4 x 4 training grid, so
# 64-pixel inputs already resize the relative-position tables). The tests, benchmarks and examples share it.
TINY = DPTConfig(
    width=32,
    depth=4,
    num_heads=2,
    train_grid=(4, 4),
    hooks=(0, 1, 2, 3),
    reassemble_channels=(8, 16, 32, 32),
    fusion_channels=16,
    head_channels=8,
    net_size=64,
)


def default_hooks(depth: int) -> tuple[int, int, int, int]:
    """The hook rule of every released model: the last block of each quarter of the encoder."""
    quarter = depth // 4
    return (quarter - 1, 2 * quarter - 1, 3 * quarter - 1, depth - 1)
