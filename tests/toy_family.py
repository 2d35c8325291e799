"""A toy model family defined only here, in the tests: its config, module, host processing and PyTorch key table,
registered with `registry.register(FAMILY)` the way a family that lives outside the package is (test_family.py).

Nothing under `beit_flax/` knows it exists: it is built only from the family interface (`models.family`), the
shared output kinds (`models.depth_output`), the converters' building blocks (`convert.rules`, `convert.checkpoint`)
and the shared image operations (`transforms`).

    patch_embed/proj        Conv(width, patch x patch, stride patch)     <-> toy.embed.{weight,bias}
    encoder/block_{i}/dense Dense(width), x + gelu(dense(x))             <-> toy.blocks.{i}.fc.{weight,bias}
    head/conv               Conv(1, 3 x 3) -> softplus -> resize to (H, W) <-> toy.head.{weight,bias}
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from beit_flax.convert.checkpoint import Checkpoint, ConversionError
from beit_flax.convert.rules import Converted, Rule, plan_tensors, read_planned, torch_state
from beit_flax.models.depth_output import MetricDepth
from beit_flax.models.family import Checkpoints, Family, refuse_options, traced_param_shapes
from beit_flax.transforms import check_net_size, fit_size, resize_bilinear_align_corners, to_unit

NAME = "toy"
NET = 64  # the side the toy pipeline resizes towards (its config has no net size)
TOP_M = 5.0  # the toy's maps are meters, coloured over 0..5 m


# --- config ----------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ToyConfig:
    width: int = 8
    depth: int = 2
    patch_size: int = 8

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{field.name} must be an int, got {value!r}")
            if not 1 <= value <= 64:
                raise ValueError(f"{field.name} must be in 1..64, got {value}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, fields: dict[str, Any]) -> ToyConfig:
        names = {field.name for field in dataclasses.fields(cls)}
        if set(fields) != names:
            raise ValueError(f"config fields must be {sorted(names)}, got {sorted(fields)}")
        return cls(**fields)

    def replace(self, **changes: Any) -> ToyConfig:
        return dataclasses.replace(self, **changes)


TINY = ToyConfig()


# --- module ----------------------------------------------------------------------------------------------------------


class _PatchEmbed(nn.Module):
    config: ToyConfig
    dtype: Any

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        p = self.config.patch_size
        return nn.Conv(self.config.width, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype, name="proj")(
            images
        )


class _Block(nn.Module):
    config: ToyConfig
    dtype: Any

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return x + nn.gelu(nn.Dense(self.config.width, dtype=self.dtype, name="dense")(x))


class _Encoder(nn.Module):
    config: ToyConfig
    dtype: Any

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for i in range(self.config.depth):
            x = _Block(self.config, self.dtype, name=f"block_{i}")(x)
        return x


class _Head(nn.Module):
    dtype: Any

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return nn.Conv(1, (3, 3), padding="SAME", dtype=self.dtype, name="conv")(x)


class ToyDepth(nn.Module):
    """(B, H, W, 3) float normalised (x - 0.5) / 0.5, H and W multiples of the patch size -> (B, H, W) float32
    meters (positive: softplus). The execution knobs are accepted as every family's module takes them."""

    config: ToyConfig
    dtype: Any = "float32"
    remat: bool = False
    scan: bool = False
    attention: str = "auto"
    query_chunk: Any = "auto"

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        dtype = jnp.dtype(self.dtype)
        batch, height, width, _ = images.shape
        x = _PatchEmbed(self.config, dtype, name="patch_embed")(images.astype(dtype))
        x = _Encoder(self.config, dtype, name="encoder")(x)
        x = _Head(dtype, name="head")(x)[..., 0].astype(jnp.float32)
        depth = jax.nn.softplus(x)
        return jax.image.resize(depth, (batch, height, width), method="bilinear")


def param_shapes(config: ToyConfig) -> dict[str, tuple[int, ...]]:
    return traced_param_shapes(ToyDepth(config), config.patch_size)


# --- processing ------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ToyProcessing:
    """Resize towards net x net (aspect kept unless `square`), bilinear with aligned corners, normalise; one view per
    image; the map resized back the same way."""

    net: int
    multiple: int
    square: bool = False
    views: int = 1

    def network_size(self, height: int, width: int) -> tuple[int, int]:
        return fit_size(height, width, (self.net, self.net), self.multiple, keep_aspect=not self.square)

    def inputs(self, image: np.ndarray, index: int = 0) -> list[tuple[None, np.ndarray]]:
        unit = to_unit(image)
        resized = resize_bilinear_align_corners(unit, self.network_size(*unit.shape[:2]))
        return [(None, (resized - 0.5) / 0.5)]

    def finish(self, size_hw: tuple[int, int], parts: list[tuple[None, np.ndarray]]) -> np.ndarray:
        return resize_bilinear_align_corners(parts[0][1], size_hw)


def processing(
    config: ToyConfig, size: int | None = None, square: bool = False, pad: bool | None = None, flip: bool | None = None
) -> ToyProcessing:
    refuse_options("Toy", pad=pad, flip=flip)
    return ToyProcessing(check_net_size(NET if size is None else size), config.patch_size, square)


# --- checkpoints -----------------------------------------------------------------------------------------------------

LAYOUT = "release"
RULES = (
    Rule("toy.embed", "patch_embed/proj", "conv"),
    Rule("toy.blocks.{i}.fc", "encoder/block_{i}/dense", "dense"),
    Rule("toy.head", "head/conv", "conv"),
)
MARKER = "toy.embed.weight"
DESCRIPTION = "a toy checkpoint (toy.embed / toy.blocks.N.fc / toy.head)"


def detect(shapes: dict[str, tuple[int, ...]]) -> str | None:
    return LAYOUT if MARKER in shapes else None


def infer_config(shapes: dict[str, tuple[int, ...]], source: str) -> ToyConfig:
    embed = shapes[MARKER]
    if len(embed) != 4 or embed[1] != 3 or embed[2] != embed[3]:
        raise ConversionError(f"{source}: {MARKER} has shape {embed}, not (width, 3, patch, patch)")
    pattern = RULES[1].torch_pattern + r"\.(weight|bias)"
    blocks = sorted({int(m["i"]) for key in shapes if (m := re.fullmatch(pattern, key))})
    if blocks != list(range(len(blocks))):
        raise ConversionError(f"{source}: blocks are not numbered 0..N-1 (found {blocks})")
    try:
        return ToyConfig(width=embed[0], depth=len(blocks), patch_size=embed[2])
    except (TypeError, ValueError) as err:
        raise ConversionError(f"{source}: {err}") from None


def to_flax(checkpoint: Checkpoint) -> Converted:
    """Every tensor planned (unknown, misshapen, non-float or missing ones are a ConversionError) before any is
    read, with the converters' shared planner."""
    source = str(checkpoint.path)
    if detect(checkpoint.shapes) is None:
        raise ConversionError(f"{source}: not {DESCRIPTION}")
    config = infer_config(checkpoint.shapes, source)
    plan, _ = plan_tensors(checkpoint, RULES, [], param_shapes(config), config.depth, "the toy config")
    return Converted(config, read_planned(checkpoint, plan), LAYOUT, NAME, dropped=[])


def to_torch(params: dict[str, Any], config: ToyConfig, layout: str) -> dict[str, np.ndarray]:
    if layout != LAYOUT:
        raise ValueError(f"unknown layout {layout!r}; the toy writes {LAYOUT!r}")
    state = torch_state(params, RULES, config.depth, param_shapes(config))
    return {name: np.require(value, requirements=["C", "W"]) for name, value in state.items()}


# --- the family ------------------------------------------------------------------------------------------------------

FAMILY = Family(
    name=NAME,
    title="Toy",
    config_class=ToyConfig,
    presets={"toy_tiny": TINY},
    tiny=TINY,
    module=ToyDepth,
    param_shapes=param_shapes,
    backbone_path="",
    encoder_depth=lambda config: config.depth,
    init_constants={"head/conv/bias": 1.0},
    input_multiple=lambda config: config.patch_size,
    output=lambda config: MetricDepth(TOP_M),
    processing=processing,
    default_loss=lambda config: "silog",
    checkpoints=Checkpoints(
        detect=detect,
        to_flax=to_flax,
        to_torch=to_torch,
        layouts=(LAYOUT,),
        description=DESCRIPTION,
        hf_config=None,
    ),
    releases=(),
)
