"""Analytic FLOP counts of one image through the DPT models, written from the architecture (DPT figure 1; BEiT /
DINOv2 blocks; MiDaS / Depth Anything decoders), independently of the model code: what XLA's cost analysis is
compared with in tests/test_lowering.py (within 5 %), and the TFLOP/s of benchmarks/device_check.py. BEiT-L 512 at
512 x 512: 962.7 GFLOP (torch's flop counter on transformers' model: 963, `throughput.GFLOP_PER_IMAGE`).

Convention: 2 FLOPs per multiply-add of every matrix product and convolution (XLA's and torch's flop counters
count the same); element-wise work (LayerNorm, GELU, softmax, resizes, adds) is left out: under 1 % of these
models at their native sizes. Every count is per image, for an (H, W) network input.

    Matrix product (n x k) @ (k x m):           2 n k m
    k x k convolution, c_in -> c_out, P outputs: 2 P k^2 c_in c_out   (padding counted as if it were data)
    Transposed s x s convolution, stride s:     2 (s h)(s w) c_in c_out  (each output reads one input pixel)
"""

from __future__ import annotations

import math
from typing import NamedTuple


def conv(pixels: int, kernel: int, c_in: int, c_out: int) -> int:
    return 2 * pixels * kernel * kernel * c_in * c_out


class Attention(NamedTuple):
    """The FLOPs of one block's softmax(q k^T) v for `queries` queries over `keys` keys (its two products)."""

    queries: int
    keys: int
    width: int

    @property
    def flops(self) -> int:
        return 2 * 2 * self.queries * self.keys * self.width


def vit_block(tokens: int, width: int, hidden: int) -> int:
    """One pre-norm ViT block's products except the attention's two: q, k, v, the output projection, the MLP."""
    return 2 * tokens * width * (3 * width) + 2 * tokens * width * width + 2 * 2 * tokens * width * hidden


def dpt_decoder(
    grid_hw: tuple[int, int],
    width: int,
    stage_channels: tuple[int, int, int, int],
    fusion: int,
    head: int,
    out_hw: tuple[int, int],
    *,
    readout: bool,
) -> int:
    """Reassemble x4 (readout, 1x1 project, resample x4 / x2 / - / 3x3 stride 2, 3x3 to the fusion width), fusion
    x4 (residual conv units of two 3x3 convs, 1x1 out conv after each resize), head (3x3 F -> F/2 at the last
    fusion size, 3x3 F/2 -> head at the output size, 1x1 head -> 1)."""
    h, w = grid_hw
    n = h * w
    sizes = [(4 * h, 4 * w), (2 * h, 2 * w), (h, w), ((h + 1) // 2, (w + 1) // 2)]
    flops = 0
    for (sh, sw), channels, stage in zip(sizes, stage_channels, range(4)):
        if readout:
            flops += 2 * n * (2 * width) * width  # Linear(concat[token, cls]) -> C
        flops += conv(n, 1, width, channels)
        if stage == 0:
            flops += conv(sh * sw, 1, channels, channels)  # 4x4 stride 4 transposed conv: one tap per output
        elif stage == 1:
            flops += conv(sh * sw, 1, channels, channels)
        elif stage == 3:
            flops += conv(sh * sw, 3, channels, channels)
        flops += conv(sh * sw, 3, channels, fusion)  # to the fusion width, no bias
    pixels = [sh * sw for sh, sw in sizes]  # l1 .. l4
    rcu = lambda p: 2 * conv(p, 3, fusion, fusion)
    flops += rcu(pixels[3]) + conv(pixels[2], 1, fusion, fusion)  # fusion_4: no skip unit, resized to l3's size
    flops += 2 * rcu(pixels[2]) + conv(pixels[1], 1, fusion, fusion)
    flops += 2 * rcu(pixels[1]) + conv(pixels[0], 1, fusion, fusion)
    flops += 2 * rcu(pixels[0]) + conv(4 * pixels[0], 1, fusion, fusion)  # fusion_1: out at 8h x 8w
    out = out_hw[0] * out_hw[1]
    flops += conv(4 * pixels[0], 3, fusion, fusion // 2) + conv(out, 3, fusion // 2, head) + conv(out, 1, head, 1)
    return flops


def beit_dpt(config, size_hw: tuple[int, int], attention: Attention | None = None) -> int:
    """MiDaS BEiT-DPT (`DPTConfig`): 16x16 patch embedding, `depth` BEiT blocks (MLP 4C), the DPT decoder with the
    project readout, output at the input size. `attention`: one block's attention FLOPs as the program computes
    them (default: all N queries over N keys at once)."""
    p, c = config.patch_size, config.width
    grid = (size_hw[0] // p, size_hw[1] // p)
    n = grid[0] * grid[1]
    tokens = n + 1
    attention = attention or Attention(tokens, tokens, c)
    encoder = config.depth * (vit_block(tokens, c, 4 * c) + attention.flops)
    decoder = dpt_decoder(
        grid, c, config.reassemble_channels, config.fusion_channels, config.head_channels, size_hw, readout=True
    )
    return 2 * n * (3 * p * p) * c + encoder + decoder


def depth_anything(config, size_hw: tuple[int, int], attention: Attention | None = None) -> int:
    """Depth Anything (`DepthAnythingConfig`, MLP feed-forward): 14x14 patch embedding (+ the position table at its
    training grid, no FLOPs), `depth` DINOv2 blocks, the DPT decoder without readout, 32 head channels."""
    p, c = config.patch_size, config.width
    grid = (size_hw[0] // p, size_hw[1] // p)
    n = grid[0] * grid[1]
    tokens = n + 1
    attention = attention or Attention(tokens, tokens, c)
    encoder = config.depth * (vit_block(tokens, c, config.ffn_channels) + attention.flops)
    decoder = dpt_decoder(grid, c, config.out_channels, config.features, 32, size_hw, readout=config.use_clstoken)
    return 2 * n * (3 * p * p) * c + encoder + decoder


def gflop(flops: float) -> float:
    return round(flops / 1e9, 3)


def relative(measured: float, expected: float) -> float:
    return abs(measured - expected) / expected if expected else math.inf
