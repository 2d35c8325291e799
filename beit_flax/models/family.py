"""The family interface: everything the application layer (CLI, `Predictor`, pipeline, video, app, export, weights
file, hub names, converter driver, training) may ask of a model family. Each family states it once, in
`models/<family>/family.py`, and `models/registry.py` lists the families; code outside `models/` asks a `Family`
and never branches on one.

A family is a frozen dataclass of plain values and functions (no subclassing): what its checkpoints look like
(`Checkpoints`), which released files it has names for (`Release`), how an image becomes network inputs and the
outputs a full-size map (`Processing`), and what that map means (`depth_output.DepthOutput`).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from beit_flax.models.depth_output import DepthOutput


class Processing(Protocol):
    """A family's host pre- and post-processing for one set of options (net size, aspect, test-time augmentation).

    An image becomes `views` network inputs (`inputs`: MiDaS one, ZoeDepth's flip-averaging two), each paired with
    the view metadata its postprocessing needs; `finish` turns an image's [(view, network output)] back into the map
    at the image's own size. Everything is numpy on the host, thread-safe (the pipeline runs it in worker threads).
    """

    net: Any  # the net size as the family states it (an int side, or (H, W)): for messages
    views: int  # network inputs per image

    def network_size(self, height: int, width: int) -> tuple[int, int]:
        """The network input (H', W') of a (height, width) image."""
        ...

    def inputs(self, image: np.ndarray, index: int = 0) -> list[tuple[Any, np.ndarray]]:
        """(H, W, 3) uint8 / uint16 / float in [0, 1] RGB -> [(view, network input (H', W', 3) float32)]."""
        ...

    def finish(self, size_hw: tuple[int, int], parts: list[tuple[Any, np.ndarray]]) -> np.ndarray:
        """An image's [(view, network output (H', W') float32)], in `inputs` order -> its (H, W) float32 map."""
        ...


@dataclasses.dataclass(frozen=True)
class OneViewProcessing:
    """The `Processing` of pipelines that feed one network input per image and resize the output back to the image
    (MiDaS run.py, Depth Anything's infer_image), from the family's three functions:
    `target_size(height, width, net, square=)`, `preprocess(image, net, square=)`, `postprocess(depth, size_hw)`."""

    net: int
    square: bool
    target_size: Callable[..., tuple[int, int]]
    preprocess: Callable[..., np.ndarray]
    postprocess: Callable[[np.ndarray, tuple[int, int]], np.ndarray]
    views: int = 1

    def network_size(self, height: int, width: int) -> tuple[int, int]:
        return self.target_size(height, width, self.net, square=self.square)

    def inputs(self, image: np.ndarray, index: int = 0) -> list[tuple[None, np.ndarray]]:
        return [(None, self.preprocess(image, self.net, square=self.square))]

    def finish(self, size_hw: tuple[int, int], parts: list[tuple[None, np.ndarray]]) -> np.ndarray:
        return self.postprocess(parts[0][1], size_hw)


@dataclasses.dataclass(frozen=True)
class Release:
    """A released checkpoint that `--weights NAME` resolves: its release file `url`, the same model's hub `repo`,
    the file's `sha256` where the source publishes one, its licence (stated in the summary line), and `preset`: the
    family preset whose architecture the file must convert to (default: the release's own name), so that a download
    under this name that is another model is refused."""

    name: str
    url: str
    repo: str
    sha256: str | None = None
    licence: str = "MIT"
    preset: str | None = None

    @property
    def preset_name(self) -> str:
        return self.preset or self.name

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


@dataclasses.dataclass(frozen=True)
class Checkpoints:
    """A family's PyTorch checkpoint layouts, read and written through its key tables (`<family>/convert/`).

    detect: checkpoint names and shapes -> the layout it reads ("release", "hf-v4", ...), or None (not this family's).
    to_flax: an opened `convert.checkpoint.Checkpoint` -> `convert.rules.Converted` (every tensor accounted for);
      ConversionError for a checkpoint of this family it cannot read.
    to_torch: (params, config, layout) -> {torch name: numpy array}; layout one of `layouts`, the layouts it
      writes, the release files' first ("midas", "release"), then transformers' ("hf-v4", "hf-v5").
    hf_config: config -> transformers' config.json dict (None: no transformers port).
    description: what its checkpoints are, for error messages.
    explain: names and shapes -> why they are an unsupported relative of this family (or None).
    release_key: the key the release `.pt` wraps its state dict in (ZoeDepth's {"model": ...}), or None.
    takes_max_depth: its checkpoints do not say whether they are metric (Depth Anything: a metric file has a
      relative one's tensors), so `to_flax(checkpoint, max_depth=M)` is how a caller says so.
    """

    detect: Callable[[Mapping[str, tuple[int, ...]]], str | None]
    to_flax: Callable[[Any], Any]
    to_torch: Callable[[Any, Any, str], dict[str, np.ndarray]]
    layouts: tuple[str, ...]
    description: str
    hf_config: Callable[[Any], dict[str, Any]] | None = None
    explain: Callable[[Mapping[str, tuple[int, ...]]], str | None] = lambda shapes: None
    release_key: str | None = None
    takes_max_depth: bool = False


@dataclasses.dataclass(frozen=True)
class Family:
    """One model family: the whole of what the application layer knows of it.

    name: what weights files record ("model") and the registry's key. title: for people ("MiDaS v3.1 BEiT-DPT").
    config_class: its frozen config (`to_dict`, `from_dict`, `replace`); presets: released configs by name; tiny:
      the smallest config that exercises every part (tests, benchmarks, examples).
    module: the linen module, `module(config, dtype=..., remat=..., ...)`; `apply` maps (B, H, W, 3) float32
      normalised as its processing does ((x - 0.5) / 0.5; Depth Anything: ImageNet mean / std) to (B, H, W)
      float32 (its export signature too).
    param_shapes: config -> {flax path: shape}.
    backbone_path: where its transformer backbone sits in the parameter tree ("", ZoeDepth's "core/"): under it,
      "patch_embed" (embedding, class token) and "encoder/block_{i}", i < encoder_depth(config). Weights files are
      checked, layer-wise learning-rate decay and `freeze=backbone` are applied by these names.
    init_constants: {parameter path: value} where the random init differs from flax's rules (a head's last bias).
    input_multiple: config -> what H and W of a network input must be multiples of.
    output: config -> what its maps mean (`DepthOutput`: relative inverse depth, or meters with a colour range).
    processing: (config, size=None, square=False, pad=None, flip=None) -> `Processing`; None options mean the
      family's own pipeline, and an option the family's pipeline lacks is a ValueError.
    default_loss: config -> the training loss for its output (`training.losses.LOSSES`).
    checkpoints: its PyTorch layouts (`Checkpoints`). releases: the names `--weights` resolves.
    extends: the family whose checkpoints this one's contain (ZoeDepth holds a DPT core): when both detect a
      checkpoint, the extending one reads it.
    """

    name: str
    title: str
    config_class: type
    presets: Mapping[str, Any]
    tiny: Any
    module: type[nn.Module]
    param_shapes: Callable[[Any], dict[str, tuple[int, ...]]]
    backbone_path: str
    encoder_depth: Callable[[Any], int]
    init_constants: Mapping[str, float]
    input_multiple: Callable[[Any], int]
    output: Callable[[Any], DepthOutput]
    processing: Callable[..., Processing]
    default_loss: Callable[[Any], str]
    checkpoints: Checkpoints
    releases: tuple[Release, ...] = ()
    extends: str | None = None

    @property
    def backbone(self) -> tuple[str, str]:
        """The parameter path prefixes of the backbone (`training.create_train_state(freeze=...)`)."""
        return f"{self.backbone_path}patch_embed", f"{self.backbone_path}encoder"

    def build(self, config: Any, **knobs: Any) -> nn.Module:
        """The linen module for `config` with execution knobs (dtype, remat, scan, attention, query_chunk)."""
        return self.module(config, **knobs)

    def probe_shapes(self, config: Any) -> tuple[tuple[int, int], tuple[int, int]]:
        """Two network inputs (H, W) that between them take every path that depends on the input size (a position
        table used as trained or resized): the smallest legal square and the default network size. What
        `precast.precast` traces."""
        side, net = self.input_multiple(config), self.processing(config).net
        return (side, side), ((net, net) if isinstance(net, int) else (int(net[0]), int(net[1])))


def refuse_options(title: str, **options: Any) -> None:
    """ValueError naming the test-time options (pad, flip) that were set for a family whose pipeline has none."""
    given = [name for name, value in options.items() if value is not None]
    if given:
        flags = " / ".join(f"--no-{name}" for name in given)
        raise ValueError(f"{flags} ({', '.join(given)}): {title}'s pipeline has no test-time padding or flip")


def traced_param_shapes(module: nn.Module, side: int) -> dict[str, tuple[int, ...]]:
    """{flax path: shape} of `module`'s parameters, traced abstractly on one (1, side, side, 3) input: no compile,
    no memory. Shapes do not depend on the input size; the smallest legal side traces fastest."""
    return dict(_traced(module, side))


@functools.lru_cache(maxsize=16)
def _traced(module: nn.Module, side: int) -> tuple[tuple[str, tuple[int, ...]], ...]:
    # tracing BEiT-L takes seconds, and converting and saving both need the shapes: hence the cache
    images = jax.ShapeDtypeStruct((1, side, side, 3), jnp.float32)
    variables = jax.eval_shape(module.init, jax.random.key(0), images)
    flat = traverse_util.flatten_dict(variables["params"], sep="/")
    return tuple((path, tuple(leaf.shape)) for path, leaf in flat.items())
