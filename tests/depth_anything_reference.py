"""The original Depth Anything V2 re-created in torch for the tests (DepthAnything/Depth-Anything-V2:
`depth_anything_v2/dpt.py`, `dinov2.py`, `dinov2_layers/`, `util/blocks.py`, `util/transform.py`; the metric variant
from `metric_depth/depth_anything_v2/dpt.py`), written from the original's steps, with its module names, so that
`state_dict()` has the release files' keys and `load_state_dict(strict=True)` is the original's loading.

What decides parity is kept exactly: DINOv2's `interpolate_pos_encoding` (bicubic with `scale_factor` and the 0.1
offset, the early return at the training grid of a square input), fused qkv, LayerScale, the final norm on each
tap, the head's `size=` / `scale_factor=2` fusion resizes with align_corners=True, the output convolution resized to
14 x the patch grid, ReLU (relative) or sigmoid x max_depth (metric), and `infer_image` with cv2's INTER_CUBIC
"lower_bound" resize and bilinear align_corners=True back. Nothing is downloaded: weights are seeded random ones,
perturbed so that every parameter matters (`perturb`).
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads, self.qkv, self.proj = heads, nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * (c // self.heads) ** -0.5, qkv[1], qkv[2]
        attn = (q @ k.transpose(-2, -1)).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class LayerScale(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SwiGLUFFN(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w12, self.w3 = nn.Linear(dim, 2 * hidden), nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        x1, x2 = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(x1) * x2)


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int, swiglu: bool) -> None:
        super().__init__()
        self.norm1, self.attn, self.ls1 = nn.LayerNorm(dim, eps=1e-6), Attention(dim, heads), LayerScale(dim)
        self.norm2, self.ls2 = nn.LayerNorm(dim, eps=1e-6), LayerScale(dim)
        self.mlp = SwiGLUFFN(dim, hidden) if swiglu else Mlp(dim, hidden)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, 14, 14)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class DinoVisionTransformer(nn.Module):
    def __init__(self, dim: int, depth: int, heads: int, hidden: int, grid: int, swiglu: bool = False) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed(dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid + 1, dim))
        self.mask_token = nn.Parameter(torch.zeros(1, dim))
        self.blocks = nn.ModuleList(Block(dim, heads, hidden, swiglu) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.interpolate_offset = 0.1

    def interpolate_pos_encoding(self, x: Tensor, w: int, h: int) -> Tensor:
        """The original's, `w` being the image's rows (it is called with x.shape's (w, h) = (H, W))."""
        npatch, n = x.shape[1] - 1, self.pos_embed.shape[1] - 1
        if npatch == n and w == h:
            return self.pos_embed
        pos = self.pos_embed.float()
        class_pos, patch_pos = pos[:, 0], pos[:, 1:]
        dim, w0, h0, m = x.shape[-1], w // 14, h // 14, int(math.sqrt(n))
        sx, sy = float(w0 + self.interpolate_offset) / m, float(h0 + self.interpolate_offset) / m
        patch_pos = F.interpolate(
            patch_pos.reshape(1, m, m, dim).permute(0, 3, 1, 2), scale_factor=(sx, sy), mode="bicubic", antialias=False
        )
        assert (w0, h0) == patch_pos.shape[-2:]
        patch_pos = patch_pos.permute(0, 2, 3, 1).view(1, -1, dim)
        return torch.cat((class_pos.unsqueeze(0), patch_pos), dim=1).to(x.dtype)

    def get_intermediate_layers(self, x: Tensor, taps: list[int]) -> list[tuple[Tensor, Tensor]]:
        _, _, w, h = x.shape
        x = self.patch_embed(x)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        x = x + self.interpolate_pos_encoding(x, w, h)
        outputs = []
        for i, blk in enumerate(self.blocks):
            x = blk(x)
            if i in taps:
                outputs.append(x)
        outputs = [self.norm(out) for out in outputs]
        return [(out[:, 1:], out[:, 0]) for out in outputs]


class ResidualConvUnit(nn.Module):
    def __init__(self, features: int) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(features, features, 3, 1, 1), nn.Conv2d(features, features, 3, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv2(F.relu(self.conv1(F.relu(x)))) + x


class FeatureFusionBlock(nn.Module):
    def __init__(self, features: int) -> None:
        super().__init__()
        self.out_conv = nn.Conv2d(features, features, 1)
        self.resConfUnit1, self.resConfUnit2 = ResidualConvUnit(features), ResidualConvUnit(features)

    def forward(self, *xs: Tensor, size=None) -> Tensor:
        output = xs[0]
        if len(xs) == 2:
            output = output + self.resConfUnit1(xs[1])
        output = self.resConfUnit2(output)
        modifier = {"scale_factor": 2} if size is None else {"size": size}
        output = F.interpolate(output, **modifier, mode="bilinear", align_corners=True)
        return self.out_conv(output)


class DPTHead(nn.Module):
    def __init__(self, in_channels: int, features: int, out_channels: list[int], metric: bool) -> None:
        super().__init__()
        self.projects = nn.ModuleList(nn.Conv2d(in_channels, c, 1) for c in out_channels)
        self.resize_layers = nn.ModuleList(
            [
                nn.ConvTranspose2d(out_channels[0], out_channels[0], 4, 4),
                nn.ConvTranspose2d(out_channels[1], out_channels[1], 2, 2),
                nn.Identity(),
                nn.Conv2d(out_channels[3], out_channels[3], 3, 2, 1),
            ]
        )
        self.scratch = nn.Module()
        for k, c in enumerate(out_channels, start=1):
            setattr(self.scratch, f"layer{k}_rn", nn.Conv2d(c, features, 3, 1, 1, bias=False))
            setattr(self.scratch, f"refinenet{k}", FeatureFusionBlock(features))
        self.scratch.output_conv1 = nn.Conv2d(features, features // 2, 3, 1, 1)
        self.scratch.output_conv2 = nn.Sequential(
            nn.Conv2d(features // 2, 32, 3, 1, 1),
            nn.ReLU(True),
            nn.Conv2d(32, 1, 1),
            nn.Sigmoid() if metric else nn.ReLU(True),
            nn.Identity(),
        )

    def forward(self, features: list[tuple[Tensor, Tensor]], ph: int, pw: int) -> Tensor:
        out = []
        for i, (x, _) in enumerate(features):
            x = x.permute(0, 2, 1).reshape(x.shape[0], x.shape[-1], ph, pw)
            out.append(self.resize_layers[i](self.projects[i](x)))
        s = self.scratch
        l1, l2, l3, l4 = (getattr(s, f"layer{k}_rn")(x) for k, x in enumerate(out, start=1))
        p4 = s.refinenet4(l4, size=l3.shape[2:])
        p3 = s.refinenet3(p4, l3, size=l2.shape[2:])
        p2 = s.refinenet2(p3, l2, size=l1.shape[2:])
        p1 = s.refinenet1(p2, l1)
        out = F.interpolate(s.output_conv1(p1), (ph * 14, pw * 14), mode="bilinear", align_corners=True)
        return s.output_conv2(out)


class DepthAnythingV2(nn.Module):
    """`spec`: width, depth, heads, hidden, grid, taps, features, out_channels, max_depth (None: relative)."""

    def __init__(self, spec: dict) -> None:
        super().__init__()
        self.spec = spec
        self.pretrained = DinoVisionTransformer(
            spec["width"], spec["depth"], spec["heads"], spec["hidden"], spec["grid"], spec.get("swiglu", False)
        )
        metric = spec["max_depth"] is not None
        self.depth_head = DPTHead(spec["width"], spec["features"], spec["out_channels"], metric)

    def forward(self, x: Tensor) -> Tensor:
        ph, pw = x.shape[-2] // 14, x.shape[-1] // 14
        depth = self.depth_head(self.pretrained.get_intermediate_layers(x, self.spec["taps"]), ph, pw)
        depth = depth * self.spec["max_depth"] if self.spec["max_depth"] is not None else F.relu(depth)
        return depth.squeeze(1)

    @torch.no_grad()
    def infer_image(self, raw_bgr: np.ndarray, input_size: int = 518) -> np.ndarray:
        """The original's `infer_image` (cv2 BGR uint8 in, (H, W) float32 out)."""
        h, w = raw_bgr.shape[:2]
        image = cv2.cvtColor(raw_bgr, cv2.COLOR_BGR2RGB) / 255.0
        scale = max(input_size / h, input_size / w)  # Resize(keep_aspect_ratio, "lower_bound", multiple 14)

        def constrain(x: float) -> int:
            y = int(np.round(x / 14) * 14)
            return y if y >= input_size else int(np.ceil(x / 14) * 14)

        size = (constrain(scale * w), constrain(scale * h))
        image = cv2.resize(image, size, interpolation=cv2.INTER_CUBIC)
        image = (image - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
        tensor = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)).astype(np.float32))[None]
        depth = self.forward(tensor)
        return F.interpolate(depth[:, None], (h, w), mode="bilinear", align_corners=True)[0, 0].numpy()


@torch.no_grad()
def perturb(model: nn.Module, seed: int = 0) -> nn.Module:
    """Every parameter random (norms 1 + N(0, 0.1), layer scales U(0.1, 0.5), the rest N(0, 1/fan-in)), then the
    head's last bias set so that most pixels are positive after its ReLU / away from the sigmoid's flat ends."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if name.endswith("gamma"):
            p.copy_(torch.rand(p.shape, generator=g) * 0.4 + 0.1)
        elif "norm" in name and p.ndim == 1:
            p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.1 * torch.randn(p.shape, generator=g))
        else:
            fan_in = p[0].numel() if p.ndim > 1 else p.shape[-1]
            p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(max(fan_in, 1)))
    return model.eval()


def recentre_output(model: DepthAnythingV2, images: Tensor) -> None:
    """Shift the last conv's bias so the pre-activation output has median ~ +0.5 x its spread on `images`."""
    last = model.depth_head.scratch.output_conv2[2]
    activation = model.depth_head.scratch.output_conv2[3]
    with torch.no_grad():
        model.depth_head.scratch.output_conv2[3] = nn.Identity()
        raw = model(images) if model.spec["max_depth"] is None else model(images) / model.spec["max_depth"]
        model.depth_head.scratch.output_conv2[3] = activation
        last.bias -= raw.median() - 0.5 * raw.std()


def assert_nondegenerate(depth: np.ndarray) -> None:
    depth = np.asarray(depth)
    assert np.isfinite(depth).all()
    assert depth.max() > 1e-2 and (depth > 0).mean() > 0.2 and depth.std() > 0.05 * depth.max(), (
        depth.min(),
        depth.max(),
        (depth > 0).mean(),
    )
