"""Key tables' building blocks, shared by every family's converter: a `Rule` maps one torch module (or tensor) to a
flax path, its kind (`KINDS`) says which tensors the module has, which flax leaves each fills and how to lay it out
in each direction:

  dense  torch Linear  weight (out, in)         <-> kernel (in, out),  bias <-> bias
  conv   torch Conv2d  weight (out, in, kh, kw) <-> kernel (kh, kw, in, out), bias <-> bias
         torch ConvTranspose2d weight (in, out, kh, kw) takes the same transpose, read by flax's
         ConvTranspose(transpose_kernel=True) as (kh, kw, out, in)
  norm   torch LayerNorm weight <-> scale, bias <-> bias
  param  a bare tensor, copied as is (the names include the leaf)
  qkv    a fused qkv.weight (3C, C), rows [q; k; v] <-> query/key/value kernels (timm `beit.py` Attention)
  qkv_dense  a fused qkv Linear with its bias (DINOv2): weight (3C, C) and bias (3C,) <-> query/key/value
         kernels and biases
  gate_up  a fused Linear [gate; up] (DINOv2's SwiGLU w12) <-> gate and up kernels and biases

A converter reads its family's tables both ways, so a torch -> flax -> torch round trip gives back every mapped
tensor bit for bit. `read_planned` reads the planned tensors once each; `Converted` is what every converter returns.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
from flax import traverse_util

from beit_flax import interrupts
from beit_flax.convert.checkpoint import FLOAT_DTYPES, Checkpoint, ConversionError
from beit_flax.files import join_problems


@dataclasses.dataclass
class Converted:
    """A converted checkpoint: the family's config, the flax parameter tree (float32 numpy), the layout read, the
    model's name (a preset's, or a description) and the checkpoint keys dropped as unused."""

    config: Any
    params: dict[str, Any]
    layout: str
    model_name: str
    dropped: list[str]


@dataclasses.dataclass(frozen=True)
class Leaf:
    """One torch tensor of a module <-> the flax leaves it fills (several for a fused tensor).

    to_flax: the torch array -> one array per name in `flax`; to_torch: those arrays, in that order -> the torch array.
    optional: a layer built without it (transformers' key projection, the bias-free `layer*_rn` convs) lacks it.
    """

    flax: tuple[str, ...]  # leaf names under the rule's flax path; "" is the path itself
    to_flax: Callable[[np.ndarray], tuple[np.ndarray, ...]]
    to_torch: Callable[..., np.ndarray]
    optional: bool = False


def leaf(
    name: str,
    to_flax: Callable[[np.ndarray], np.ndarray],
    to_torch: Callable[[np.ndarray], np.ndarray],
    optional: bool = False,
) -> Leaf:
    return Leaf((name,), lambda t: (to_flax(t),), to_torch, optional)


same = lambda t: t
BIAS = leaf("bias", same, same, optional=True)
_QKV = ("query/kernel", "key/kernel", "value/kernel")

# kind -> {torch leaf ("" = the rule's torch name itself): Leaf}
KINDS: dict[str, dict[str, Leaf]] = {
    "dense": {"weight": leaf("kernel", lambda w: w.T, lambda k: k.T), "bias": BIAS},
    "conv": {
        "weight": leaf("kernel", lambda w: w.transpose(2, 3, 1, 0), lambda k: k.transpose(3, 2, 0, 1)),
        "bias": BIAS,
    },
    "norm": {"weight": leaf("scale", same, same), "bias": BIAS},
    "param": {"": leaf("", same, same)},
    "qkv": {
        "": Leaf(
            _QKV,
            lambda w: tuple(part.T for part in np.split(w, 3, axis=0)),
            lambda q, k, v: np.concatenate([q.T, k.T, v.T]),
        )
    },
    "qkv_dense": {
        "weight": Leaf(
            _QKV,
            lambda w: tuple(part.T for part in np.split(w, 3, axis=0)),
            lambda q, k, v: np.concatenate([q.T, k.T, v.T]),
        ),
        "bias": Leaf(
            ("query/bias", "key/bias", "value/bias"),
            lambda b: tuple(np.split(b, 3, axis=0)),
            lambda q, k, v: np.concatenate([q, k, v]),
        ),
    },
    "gate_up": {  # a fused Linear whose output rows are [gate; up] (DINOv2's SwiGLU `w12`)
        "weight": Leaf(
            ("gate/kernel", "up/kernel"),
            lambda w: tuple(part.T for part in np.split(w, 2, axis=0)),
            lambda g, u: np.concatenate([g.T, u.T]),
        ),
        "bias": Leaf(
            ("gate/bias", "up/bias"),
            lambda b: tuple(np.split(b, 2, axis=0)),
            lambda g, u: np.concatenate([g, u]),
        ),
    },
}


def _join(prefix: str, leaf: str, sep: str) -> str:
    return f"{prefix}{sep}{leaf}" if leaf else prefix


@dataclasses.dataclass(frozen=True)
class Rule:
    torch_name: str  # module prefix for dense/conv/norm, full tensor name for param/qkv; may contain {i}
    flax_path: str  # module path for dense/conv/norm, full leaf path for param; may contain {i}
    kind: str

    @property
    def torch_pattern(self) -> str:
        """Regex of `torch_name` with `{i}` as the group `i`."""
        return re.escape(self.torch_name).replace(r"\{i\}", r"(?P<i>\d+)")

    def names(self, torch_leaf: str, index: int | str | None = None) -> tuple[str, list[str]]:
        """(torch name, flax paths) of the tensor `torch_leaf` of this rule for block `index`."""
        torch_name, flax_path = self.torch_name.format(i=index), self.flax_path.format(i=index)
        flax_leaves = KINDS[self.kind][torch_leaf].flax
        return _join(torch_name, torch_leaf, "."), [_join(flax_path, leaf, "/") for leaf in flax_leaves]

    def tensors(self, depth: int) -> Iterator[tuple[str, list[str], Leaf]]:
        """(torch name, flax paths, Leaf) of every tensor this rule covers in a model with `depth` blocks."""
        for index in range(depth) if "{i}" in self.torch_name else [None]:
            for torch_leaf, leaf in KINDS[self.kind].items():
                yield *self.names(torch_leaf, index), leaf

    def match(self, key: str) -> tuple[list[str], Leaf] | None:
        """(flax paths, Leaf) of the torch tensor `key`, or None if this rule does not cover `key`."""
        found = re.fullmatch(self.torch_pattern + r"(?:\.(?P<leaf>weight|bias))?", key)
        if found is None or (found["leaf"] or "") not in KINDS[self.kind]:  # e.g. a module's name without a leaf
            return None
        torch_leaf = found["leaf"] or ""
        return self.names(torch_leaf, found.groupdict().get("i"))[1], KINDS[self.kind][torch_leaf]


def plan_tensors(
    checkpoint: Checkpoint,
    rules: Sequence[Rule],
    dropped_patterns: Sequence[str],
    expected: dict[str, tuple[int, ...]],
    depth: int,
    what: str,
) -> tuple[list[tuple[str, list[str], Leaf]], list[str]]:
    """((key, flax paths, Leaf) of every tensor to convert, dropped keys), from the names, shapes and dtypes alone.

    rules: the layout's key table; dropped_patterns: regexes of the tensors the model never uses; expected: the
    config's {flax path: shape}; depth: its block count (for the `{i}` rules); what: the config, for messages.
    ConversionError naming the keys for tensors that no rule maps, that are not float, whose shape is not the
    config's (a block past the depth included) or that are missing, before a single tensor is read.
    """
    source = str(checkpoint.path)
    names = {path: name for rule in rules for name, paths, _ in rule.tensors(depth) for path in paths}
    plan, dropped, unknown, problems, covered = [], [], [], [], set()
    for key, shape in checkpoint.shapes.items():
        target = next((t for rule in rules if (t := rule.match(key)) is not None), None)
        if target is None:
            (dropped if any(re.fullmatch(p, key) for p in dropped_patterns) else unknown).append(key)
            continue
        paths, leaf = target
        covered.update(paths)
        dtype = checkpoint.dtypes[key]
        if dtype not in FLOAT_DTYPES:
            problems.append(
                f"{key} is {'not a tensor' if dtype is None else f'a {dtype} tensor'} "
                f"(parameters are {' / '.join(FLOAT_DTYPES)})"
            )
            continue
        want = [expected.get(path) for path in paths]
        if None in want:
            problems.append(f"unexpected {key}: {what} has no {paths[0]}")
            continue
        try:  # the layout change on a zero-stride view: shapes only, nothing allocated
            got = [value.shape for value in leaf.to_flax(np.broadcast_to(np.float32(0), shape))]
        except (ValueError, IndexError):  # a rank or size the layout change cannot take
            got = None
        if got != want:
            needs = leaf.to_torch(*(np.broadcast_to(np.float32(0), w) for w in want)).shape
            problems.append(f"{key} has shape {tuple(shape)}, config needs {tuple(needs)} ({', '.join(paths)})")
            continue
        plan.append((key, paths, leaf))
    if unknown:
        raise ConversionError(f"{source}: {len(unknown)} unexpected keys: {', '.join(unknown[:10])}")
    if problems:
        raise ConversionError(f"{source}: {join_problems(problems)}")
    missing = sorted(expected.keys() - covered)
    if missing:
        listed = ", ".join(f"{names.get(path, '?')} ({path})" for path in missing[:10])
        raise ConversionError(f"{source}: {len(missing)} parameters missing from the checkpoint: {listed}")
    return plan, dropped


def torch_state(
    params: dict[str, Any], rules: Sequence[Rule], depth: int, expected: dict[str, tuple[int, ...]]
) -> dict[str, np.ndarray]:
    """{torch name: array} of every tensor `rules` map whose flax leaves the config has (`expected`: its
    param_shapes); the other variants' tensors (a bias-free layer's bias, SwiGLU vs MLP, an absent readout) are
    left out. ValueError for a leaf the config has and `params` lacks. Used by every family's export."""
    flat = {path: np.asarray(leaf, np.float32) for path, leaf in traverse_util.flatten_dict(params, sep="/").items()}
    state: dict[str, np.ndarray] = {}
    for rule in rules:
        for name, paths, leaf in rule.tensors(depth):
            if not any(path in expected for path in paths):
                continue
            missing = [path for path in paths if path not in flat]
            if missing:
                raise ValueError(f"params lack {', '.join(missing)} (for {name})")
            state[name] = leaf.to_torch(*(flat[path] for path in paths))
    return state


def read_planned(checkpoint: Checkpoint, plan: Iterable[tuple[str, list[str], Leaf]]) -> dict[str, Any]:
    """Read each planned tensor once, (checkpoint key, flax paths, Leaf), into the flax tree: float32, contiguous,
    laid out by the key table. NaN / inf is a ConversionError naming the key. Used by every family's converter."""
    flat: dict[str, np.ndarray] = {}
    for key, paths, leaf in plan:
        interrupts.check()  # a Ctrl-C swallowed where it landed (a GC callback) stops the read here
        tensor = checkpoint.take(key)
        if not np.isfinite(tensor).all():
            raise ConversionError(f"{checkpoint.path}: {key} has non-finite values (NaN or inf)")
        for path, value in zip(paths, leaf.to_flax(tensor), strict=True):
            flat[path] = np.ascontiguousarray(value, dtype=np.float32)
    return traverse_util.unflatten_dict(flat, sep="/")
