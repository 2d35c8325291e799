"""The one configuration of a BEiT-DPT model (its architecture), and the three released presets.

Field names follow the DPT paper (Ranftl et al. 2021, figure 1) and MiDaS v3.1 (`midas/dpt_depth.py`,
`midas/backbones/beit.py`; the released models' table is in the MiDaS v3.1 README). How the model runs (compute
dtype, remat, scan, attention) is not configuration: those are attributes of the `DPT` module.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from beit_flax.models.dpt.relative_position import table_rows


@dataclasses.dataclass(frozen=True)
class DPTConfig:
    """Architecture of a MiDaS v3.1 BEiT-DPT model.

    Attributes:
      width: token channels C of the BEiT encoder.
      depth: number of transformer blocks.
      num_heads: attention heads per block (C must be divisible by it).
      patch_size: side of the square patches (16 in every released model).
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
            object.__setattr__(self, name, tuple(getattr(self, name)))
        problems = []
        sizes = {
            "width": self.width, "depth": self.depth, "num_heads": self.num_heads, "patch_size": self.patch_size,
            "fusion_channels": self.fusion_channels, "head_channels": self.head_channels, "net_size": self.net_size,
            **{f"train_grid[{i}]": v for i, v in enumerate(self.train_grid)},
            **{f"reassemble_channels[{i}]": v for i, v in enumerate(self.reassemble_channels)},
        }
        problems += [f"{name} must be a positive int, got {v!r}" for name, v in sizes.items() if not _positive_int(v)]
        if not problems and self.width % self.num_heads:
            problems.append(f"width {self.width} is not divisible by num_heads {self.num_heads}")
        if len(self.train_grid) != 2:
            problems.append(f"train_grid {self.train_grid} must be two ints (gh, gw)")
        if len(self.hooks) != 4 or len(self.reassemble_channels) != 4:
            problems.append("hooks and reassemble_channels need exactly 4 entries")
        if not all(isinstance(h, int) for h in self.hooks) or list(self.hooks) != sorted(set(self.hooks)) or not (
            _positive_int(self.depth) and all(0 <= h < self.depth for h in self.hooks)
        ):
            problems.append(f"hooks {self.hooks} must be increasing block indices in [0, depth={self.depth})")
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
    def from_dict(cls, fields: dict[str, Any]) -> "DPTConfig":
        """Inverse of `to_dict`; every field must be present (a partial config would silently mean another model).

        Files written before the compute dtype became a module attribute also store "dtype"; it is ignored.
        """
        fields = {k: v for k, v in fields.items() if k not in LEGACY_FIELDS}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown, missing = sorted(set(fields) - known), sorted(known - set(fields))
        if unknown or missing:
            raise ValueError(f"config fields: unknown {unknown}, missing {missing}")
        return cls(**fields)

    def replace(self, **changes: Any) -> "DPTConfig":
        return dataclasses.replace(self, **changes)


# Fields that older weights files store but that are no longer architecture (read and ignored).
LEGACY_FIELDS = frozenset({"dtype"})


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


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


def default_hooks(depth: int) -> tuple[int, int, int, int]:
    """The hook rule of every released model: the last block of each quarter of the encoder."""
    quarter = depth // 4
    return (quarter - 1, 2 * quarter - 1, 3 * quarter - 1, depth - 1)
