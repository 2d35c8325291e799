"""The configuration of a ZoeDepth model (its architecture) and the three released presets.

ZoeDepth (Bhat et al. 2023, isl-org/ZoeDepth) is a MiDaS v3.1 BEiT-DPT (`core`, a `DPTConfig`) plus a metric bins
head on the decoder: seed bins from the bottleneck, four attractor layers refining them along the decoder, a
conditional log-binomial over the bins per pixel. One bin head (ZoeD_M12_N, _K), or several chosen per image by a
router (ZoeD_M12_NK). Field names follow the original's constructor arguments (`zoedepth/models/zoedepth/
zoedepth_v1.py` `ZoeDepth`, `zoedepth_nk/zoedepth_nk_v1.py` `ZoeDepthNK`); widths the original hard-codes per class
are fields here, so that every shape is stated (and a converter can read them off a checkpoint).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from beit_flax.models.dpt.config import PRESETS as DPT_PRESETS
from beit_flax.models.dpt.config import TINY as DPT_TINY
from beit_flax.models.dpt.config import DPTConfig

BIN_CENTERS_TYPES = ("softplus", "normed")
ATTRACTOR_KINDS = ("mean", "sum")
ATTRACTOR_TYPES = ("inv", "exp")


@dataclasses.dataclass(frozen=True)
class BinConfig:
    """One metric head's bins (the original's `bin_conf` entries).

    name: the domain ("nyu", "kitti"); with several heads it names the head's parameters and the router's choice.
    n_bins: bins per pixel. min_depth, max_depth: meters; they bound the bins only for "normed" centers (the
      seed bins' span and the attractors' clip); "softplus" centers are unbounded and these are not used.
    """

    name: str
    n_bins: int = 64
    min_depth: float = 1e-3
    max_depth: float = 10.0


@dataclasses.dataclass(frozen=True)
class RouterConfig:
    """The patch transformer that picks a bin head per image (ZoeD_M12_NK; `layers/patch_transformer.py`).

    A 1x1 conv to `width`-d tokens (the original's `PatchTransformerEncoder(..., patch_size=1, ...)`), a zero token in
    front, 1-D sin/cos positional encoding, `depth` post-norm `nn.TransformerEncoderLayer`s (ReLU FFN `mlp_dim`,
    LayerNorm `layer_norm_eps`), the front token -> Linear(width, width), ReLU, Linear(width, number of heads).
    """

    width: int = 128
    depth: int = 4
    num_heads: int = 4
    mlp_dim: int = 1024
    layer_norm_eps: float = 1e-5


@dataclasses.dataclass(frozen=True)
class ZoeDepthConfig:
    """Architecture of a ZoeDepth model on a BEiT-DPT core.

    Attributes:
      core: the MiDaS BEiT-DPT (`dpt_beit_large_384` in every released model). Its fusion_channels are the
        bottleneck's channels and its head_channels the width of the `out_conv` tap.
      bins: one `BinConfig` (a single head) or several (a router chooses one per image; `router` then required).
      bin_centers_type: "softplus" (unbounded centers: `SeedBinRegressorUnnormed`, `AttractorLayerUnnormed`) or
        "normed" (centers as normalised widths on [min_depth, max_depth]: `SeedBinRegressor`, `AttractorLayer`).
      bin_embedding_dim: channels of the bin embeddings (the projectors' output).
      n_attractors: attractors of the four attractor layers, coarsest first (tapping r4, r3, r2, r1). ZoeD_M12_NK has
        16 in all four: `ZoeDepthNK` passes its `n_attractors[i]` as the layer's `n_bins` argument, so every layer
        keeps the default 16 (the release keys confirm it).
      attractor_alpha, attractor_gamma: of the attraction dx / (1 + alpha dx^gamma) ("inv") or exp(-alpha |dx|^gamma)
        dx ("exp"). 300 and 2 in every released model: their configs say alpha 1000, but `AttractorLayer.forward`
        calls `inv_attractor(dx)` without them (`layers/attractor.py`), so the function defaults apply (transformers
        does the same).
      attractor_kind: "mean" or "sum" over the attractors.
      attractor_type: "inv" (every released model) or "exp".
      min_temp, max_temp: the range of the log-binomial's temperature.
      seed_mlp_dim, projector_mlp_dim, attractor_mlp_dim: hidden widths of the seed bin regressor, of the projectors
        (seed and decoder) and of the attractor MLPs (single head: 256, 128, 128; NK: 64, 64, 128).
      log_binomial_mlp_dim: hidden width of the conditional log-binomial's MLP ((33 + 128) // 2 = 80 single head,
        (32 + 128) // 4 = 40 NK).
      condition_on_relative_depth: the log-binomial sees the relative depth as a 33rd channel beside `out_conv`
        (`ZoeDepth`: True; `ZoeDepthNK`: False).
      router: the router of a multi-head model, None for a single head.
      net_size: (H, W) that host preprocessing resizes towards (the original's `img_size`); not used by the network.
    """

    core: DPTConfig = DPT_PRESETS["dpt_beit_large_384"]
    bins: tuple[BinConfig, ...] = (BinConfig("nyu"),)
    bin_centers_type: str = "softplus"
    bin_embedding_dim: int = 128
    n_attractors: tuple[int, int, int, int] = (16, 8, 4, 1)
    attractor_alpha: float = 300.0
    attractor_gamma: int = 2
    attractor_kind: str = "mean"
    attractor_type: str = "inv"
    min_temp: float = 0.0212
    max_temp: float = 50.0
    seed_mlp_dim: int = 256
    projector_mlp_dim: int = 128
    attractor_mlp_dim: int = 128
    log_binomial_mlp_dim: int = 80
    condition_on_relative_depth: bool = True
    router: RouterConfig | None = None
    net_size: tuple[int, int] = (384, 512)

    def __post_init__(self) -> None:
        # Lists and dicts arrive from JSON / msgpack; keep the dataclass hashable (flax modules hash their fields).
        as_bins = lambda b: b if isinstance(b, BinConfig) else BinConfig(**b)
        object.__setattr__(self, "bins", tuple(as_bins(b) for b in self.bins))
        object.__setattr__(self, "n_attractors", tuple(self.n_attractors))
        object.__setattr__(self, "net_size", tuple(self.net_size))
        if isinstance(self.core, dict):
            object.__setattr__(self, "core", DPTConfig.from_dict(self.core))
        if isinstance(self.router, dict):
            object.__setattr__(self, "router", RouterConfig(**self.router))
        problems = []
        if not self.bins:
            problems.append("bins is empty")
        names = [b.name for b in self.bins]
        if len(set(names)) != len(names) or not all(isinstance(n, str) and n.isidentifier() for n in names):
            problems.append(f"bin names {names} must be distinct identifiers")
        for b in self.bins:
            if not _positive_int(b.n_bins) or not 0 < b.min_depth < b.max_depth:
                problems.append(f"bins {b.name!r}: need n_bins > 0 and 0 < min_depth < max_depth, got {b}")
        if (self.router is None) != (len(self.bins) == 1):
            problems.append(f"{len(self.bins)} bin heads need {'no router' if len(self.bins) == 1 else 'a router'}")
        if self.router is not None and (self.router.width % self.router.num_heads or self.router.width % 2):
            problems.append(f"router width {self.router.width} must be even and divisible by its num_heads")
        for name, value, allowed in (
            ("bin_centers_type", self.bin_centers_type, BIN_CENTERS_TYPES),
            ("attractor_kind", self.attractor_kind, ATTRACTOR_KINDS),
            ("attractor_type", self.attractor_type, ATTRACTOR_TYPES),
        ):
            if value not in allowed:
                problems.append(f"{name} must be one of {allowed}, got {value!r}")
        widths = {
            "bin_embedding_dim": self.bin_embedding_dim,
            "seed_mlp_dim": self.seed_mlp_dim,
            "projector_mlp_dim": self.projector_mlp_dim,
            "attractor_mlp_dim": self.attractor_mlp_dim,
            "log_binomial_mlp_dim": self.log_binomial_mlp_dim,
            "attractor_gamma": self.attractor_gamma,
            **{f"n_attractors[{i}]": n for i, n in enumerate(self.n_attractors)},
        }
        problems += [f"{name} must be a positive int, got {v!r}" for name, v in widths.items() if not _positive_int(v)]
        if len(self.n_attractors) != 4:
            problems.append(f"n_attractors {self.n_attractors} needs 4 entries (one per decoder stage)")
        if len(self.net_size) != 2 or not all(_positive_int(n) for n in self.net_size):
            problems.append(f"net_size {self.net_size} must be (H, W), positive ints")
        if not 0 <= self.min_temp < self.max_temp:
            problems.append(f"need 0 <= min_temp < max_temp, got {self.min_temp}, {self.max_temp}")
        if problems:
            raise ValueError("invalid ZoeDepthConfig: " + "; ".join(problems))

    @property
    def log_binomial_in_channels(self) -> int:
        """Channels entering the conditional log-binomial: out_conv (+ relative depth) + the bin embedding."""
        return self.core.head_channels + int(self.condition_on_relative_depth) + self.bin_embedding_dim

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON / msgpack types: nested dicts for core, bins and router, lists for tuples."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        fields["core"] = self.core.to_dict()
        fields["bins"] = [dataclasses.asdict(b) for b in self.bins]
        fields["router"] = None if self.router is None else dataclasses.asdict(self.router)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in fields.items()}

    @classmethod
    def from_dict(cls, fields: dict[str, Any]) -> ZoeDepthConfig:
        """Inverse of `to_dict`; every field must be present (a partial config would silently mean another model)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown, missing = sorted(set(fields) - known), sorted(known - set(fields))
        if unknown or missing:
            raise ValueError(f"ZoeDepth config fields: unknown {unknown}, missing {missing}")
        return cls(**fields)

    def replace(self, **changes: Any) -> ZoeDepthConfig:
        return dataclasses.replace(self, **changes)


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


_N = ZoeDepthConfig()
PRESETS: dict[str, ZoeDepthConfig] = {
    # ZoeD_M12_N.pt / Intel/zoedepth-nyu
    "zoedepth_n": _N,
    # ZoeD_M12_K.pt / Intel/zoedepth-kitti: normed bins; max_depth stays 10 (sic: hubconf's infer config keeps the
    # default, and so does transformers' converter), so its output stays below 10 m.
    "zoedepth_k": _N.replace(bins=(BinConfig("kitti"),), bin_centers_type="normed", net_size=(384, 768)),
    # ZoeD_M12_NK.pt / Intel/zoedepth-nyu-kitti
    "zoedepth_nk": _N.replace(
        bins=(BinConfig("nyu"), BinConfig("kitti", max_depth=80.0)),
        n_attractors=(16, 16, 16, 16),
        seed_mlp_dim=64,
        projector_mlp_dim=64,
        log_binomial_mlp_dim=40,
        condition_on_relative_depth=False,
        router=RouterConfig(),
    ),
}

# Not a release: one softplus head of 16 bins with 16-wide embeddings on the DPT's TINY core, the smallest ZoeDepth
# that exercises every part of one head (tests, examples).
TINY = ZoeDepthConfig(
    core=DPT_TINY,
    bins=(BinConfig("nyu", 16),),
    bin_embedding_dim=16,
    n_attractors=(4, 3, 2, 1),
    attractor_mlp_dim=16,
    log_binomial_mlp_dim=(DPT_TINY.head_channels + 1 + 16) // 2,
)
