"""ZoeDepth (Bhat et al. 2023, figure 2): the MiDaS BEiT-DPT core plus metric bins on its decoder.

  core (`DPT`)  -> relative depth, out_conv (head activation), l4_rn, r4, r3, r2, r1
  conv2 (1x1 on l4_rn)                               -> bottleneck
  seed_projector(bottleneck), projector_i(r_{4-i})   -> bin embeddings (shared by every domain)
  per domain (`MetricBins`): seed bins, 4 attractor layers, conditional log-binomial -> metric depth
  several domains: `Router` on the bottleneck picks one per image

The original runs this inside `ZoeDepth.forward` (`zoedepth/models/zoedepth/zoedepth_v1.py`) and
`ZoeDepthNK.forward` (`zoedepth_nk/zoedepth_nk_v1.py`); its input resize (`PrepForMidas`) is host preprocessing here.
"""

from __future__ import annotations

from typing import NamedTuple

import flax.linen as nn
import jax.numpy as jnp

from beit_flax.models.dpt.attention import AttentionImpl, QueryChunk
from beit_flax.models.dpt.dpt import DPT, check_execution_knobs, check_network_input
from beit_flax.models.precision import matmul_precision
from beit_flax.models.zoedepth.bins import Projector, conv1x1
from beit_flax.models.zoedepth.config import ZoeDepthConfig
from beit_flax.models.zoedepth.metric_bins import MetricBins
from beit_flax.models.zoedepth.router import Router, route

INPUT_MULTIPLE = 32
"""H and W must be multiples of this: the original resizes to multiples of 32 (`PrepForMidas`), and only there do the
MiDaS and transformers fusion rules agree (see `dpt/fusion.py`)."""


class ZoeDepthOutput(NamedTuple):
    """What `ZoeDepth.outputs` returns.

    metric_depth: (B, H, W) float32 meters (what `ZoeDepth.__call__` returns).
    relative_depth: (B, H, W) float32, the core's relative inverse depth.
    domain: (B,) int32 index into `config.bins` of the head each image used (zeros for a single head).
    domain_logits: (B, len(bins)) float32 router logits, or None for a single head.
    """

    metric_depth: jnp.ndarray
    relative_depth: jnp.ndarray
    domain: jnp.ndarray
    domain_logits: jnp.ndarray | None


class ZoeDepth(nn.Module):
    """ZoeDepth on a MiDaS BEiT-DPT core (ZoeD_M12_N / _K / _NK with the `PRESETS`).

    `apply({"params": params}, images)` with images (B, H, W, 3) float, normalised as (x - 0.5) / 0.5, H and W
    multiples of 32, returns (B, H, W) float32 metric depth in meters. `apply(..., method="outputs")` returns
    `ZoeDepthOutput` (also the relative depth and the router's choice).

    Parameters: "core" (the `DPT` tree), "conv2", "seed_projector", "projector_{0..3}" (tapping r4, r3, r2, r1), and
    per domain a `MetricBins` tree named "metric" (one head) or after its `BinConfig.name` (several), plus "router".

    The execution knobs go to the core as they are (see `DPT`): dtype, remat, scan, attention, query_chunk. The
    metric head runs in float32 whatever the compute dtype: it is ~2 % of the FLOPs (15 of 724 GFLOP at 384 x 512),
    and the log-binomial's logs, divided by temperatures down to 0.02, need the precision.

    With several heads every head runs on every image and each image keeps its router's choice: per-image routing,
    where the original routes the whole batch by its summed logits (`router.py`); at batch 1 they agree.
    """

    config: ZoeDepthConfig
    dtype: str = "float32"
    remat: bool = False
    scan: bool = False
    attention: AttentionImpl = "auto"
    query_chunk: QueryChunk = "auto"

    def __post_init__(self) -> None:
        check_execution_knobs(self)
        super().__post_init__()

    def __call__(self, images_bhwc: jnp.ndarray) -> jnp.ndarray:
        return self.outputs(images_bhwc).metric_depth

    @nn.compact
    def outputs(self, images_bhwc: jnp.ndarray) -> ZoeDepthOutput:
        cfg = self.config
        check_zoedepth_input(images_bhwc, cfg.core.patch_size)
        core = DPT(
            cfg.core,
            dtype=self.dtype,
            remat=self.remat,
            scan=self.scan,
            attention=self.attention,
            query_chunk=self.query_chunk,
            name="core",
        )
        taps = core.features(images_bhwc)
        f32 = lambda x: x.astype(jnp.float32)
        with matmul_precision(jnp.float32):
            bottleneck = conv1x1(cfg.core.fusion_channels, "conv2")(f32(taps.layer4_rn))
            seed_embedding = Projector(cfg.bin_embedding_dim, cfg.projector_mlp_dim, name="seed_projector")(bottleneck)
            embeddings = tuple(
                Projector(cfg.bin_embedding_dim, cfg.projector_mlp_dim, name=f"projector_{i}")(f32(feature))
                for i, feature in enumerate(taps.fusion)
            )
            head_inputs = (bottleneck, seed_embedding, embeddings, f32(taps.head_activation), taps.depth)
            if cfg.router is None:
                depth = MetricBins(cfg, cfg.bins[0], name="metric")(*head_inputs)
                domain = jnp.zeros(depth.shape[:1], jnp.int32)
                return ZoeDepthOutput(depth, taps.depth, domain, None)
            logits = Router(cfg.router, len(cfg.bins), name="router")(bottleneck)
            domain = route(logits)
            depths = jnp.stack([MetricBins(cfg, b, name=b.name)(*head_inputs) for b in cfg.bins], axis=1)
            depth = jnp.take_along_axis(depths, domain[:, None, None, None], axis=1)[:, 0]
            return ZoeDepthOutput(depth, taps.depth, domain, logits)


def check_zoedepth_input(images: jnp.ndarray, patch_size: int) -> None:
    """`check_network_input`, and H, W multiples of 32; raises ValueError naming the shape received."""
    check_network_input(images, patch_size)
    _, h, w, _ = images.shape
    if h % INPUT_MULTIPLE or w % INPUT_MULTIPLE:
        raise ValueError(f"ZoeDepth needs H and W multiples of {INPUT_MULTIPLE}; got shape {tuple(images.shape)}")
