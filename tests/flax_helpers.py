"""Shared helpers for the module-level torch comparisons.

* Layout transforms the converter uses to turn torch weights into Flax kernels:
  Conv2d (out, in, kh, kw) and ConvTranspose2d (in, out, kh, kw) -> `w.transpose(2, 3, 1, 0)`;
  Linear (out, in) -> `w.T`.
* Direct torch versions of the two relative-position rules (timm's `gen_relative_position_index` and MiDaS v3.1's
  `_get_rel_pos_bias` in `midas/backbones/beit.py`), written from the original code.
* `rel_err` / `assert_close`: max|ours - torch| / max|torch|, printed so `pytest -s` shows the observed figures.
"""

from __future__ import annotations

import jax
import numpy as np
import torch
import torch.nn.functional as F

TOL = 1e-5


# --- layout transforms -------------------------------------------------------------------------------------------


def torch_conv_to_flax(w: torch.Tensor) -> np.ndarray:
    """Conv2d (out, in, kh, kw) or ConvTranspose2d (in, out, kh, kw) -> Flax kernel (kh, kw, ., .)."""
    return w.detach().numpy().transpose(2, 3, 1, 0).copy()


def torch_linear_to_flax(w: torch.Tensor) -> np.ndarray:
    """Linear (out, in) -> Flax Dense kernel (in, out)."""
    return w.detach().numpy().T.copy()


def to_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().numpy().copy()


def nchw_to_nhwc(t: torch.Tensor) -> np.ndarray:
    return t.detach().numpy().transpose(0, 2, 3, 1).copy()


def nhwc_to_nchw(x) -> torch.Tensor:
    return torch.from_numpy(np.asarray(x, dtype=np.float32).transpose(0, 3, 1, 2).copy())


# --- random tensors ----------------------------------------------------------------------------------------------


def randn(gen: torch.Generator, *shape: int, scale: float = 1.0, offset: float = 0.0) -> torch.Tensor:
    return torch.randn(*shape, generator=gen) * scale + offset


def conv_weight(gen: torch.Generator, out_ch: int, in_ch: int, k: int) -> torch.Tensor:
    """A Conv2d weight with fan-in scaling, so activations stay O(1) through a few layers."""
    return randn(gen, out_ch, in_ch, k, k, scale=(in_ch * k * k) ** -0.5)


def random_conv(
    gen: torch.Generator, out_ch: int, in_ch: int, k: int
) -> tuple[tuple[torch.Tensor, torch.Tensor], dict]:
    """A random torch conv ((weight, bias)) and the matching Flax param dict {"kernel", "bias"}."""
    w, b = conv_weight(gen, out_ch, in_ch, k), randn(gen, out_ch, scale=0.1)
    return (w, b), {"kernel": torch_conv_to_flax(w), "bias": to_numpy(b)}


# --- flax plumbing -----------------------------------------------------------------------------------------------


def assert_params_match_module(module, params, *args) -> None:
    """The params built from torch have exactly the paths and shapes `module.init(key, *args)` declares.

    Arrays in `args` are traced; everything else (grid sizes, target sizes) is closed over as static. Uses
    `jax.eval_shape`, so nothing is compiled (an eager `init` compiles every initialiser: seconds per module).
    """
    is_array = [isinstance(a, (np.ndarray, jax.Array)) for a in args]
    arrays = [a for a, arr in zip(args, is_array) if arr]

    def init(*traced):
        it = iter(traced)
        return module.init(jax.random.key(0), *[next(it) if arr else a for a, arr in zip(args, is_array)])

    declared = jax.eval_shape(init, *arrays)["params"]
    shapes = lambda tree: jax.tree.map(lambda leaf: tuple(np.shape(leaf)), tree)
    assert shapes(declared) == shapes(params)


# --- error measure -----------------------------------------------------------------------------------------------


def rel_err(ours, ref) -> float:
    ours = np.asarray(ours, dtype=np.float64)
    ref = np.asarray(ref.detach().numpy() if isinstance(ref, torch.Tensor) else ref, dtype=np.float64)
    assert ours.shape == ref.shape, f"shape {ours.shape} != torch {ref.shape}"
    scale = np.max(np.abs(ref))
    assert scale > 0, "reference is all zeros: the comparison could not fail"
    return float(np.max(np.abs(ours - ref)) / scale)


def assert_close(ours, ref, label: str, tol: float = TOL) -> float:
    err = rel_err(ours, ref)
    print(f"[rel-err] {label}: {err:.3g}")
    assert err <= tol, f"{label}: max|ours - torch| / max|torch| = {err:.3g} > {tol:g}"
    return err


# --- direct torch relative-position rules ------------------------------------------------------------------------


def torch_relative_position_index(grid_hw: tuple[int, int]) -> torch.Tensor:
    """timm 0.6 `gen_relative_position_index` for a (h, w) window, cls token at position 0."""
    h, w = grid_hw
    rows = (2 * h - 1) * (2 * w - 1) + 3
    coords = torch.stack(torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")).flatten(1)  # (2, h*w)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0).contiguous()  # (hw, hw, 2)
    rel[:, :, 0] += h - 1
    rel[:, :, 1] += w - 1
    rel[:, :, 0] *= 2 * w - 1
    index = torch.zeros((h * w + 1,) * 2, dtype=torch.long)
    index[1:, 1:] = rel.sum(-1)
    index[0, 0:] = rows - 3
    index[0:, 0] = rows - 2
    index[0, 0] = rows - 1
    return index


def torch_resize_table(table: torch.Tensor, train_grid: tuple[int, int], grid_hw: tuple[int, int]) -> torch.Tensor:
    """The table half of MiDaS `_get_rel_pos_bias`: resize the offset rows, keep the 3 cls rows."""
    old_h, old_w = 2 * train_grid[0] - 1, 2 * train_grid[1] - 1
    new_h, new_w = 2 * grid_hw[0] - 1, 2 * grid_hw[1] - 1
    old_rows = old_h * old_w
    sub = table[:old_rows].reshape(1, old_w, old_h, -1).permute(0, 3, 1, 2)
    sub = F.interpolate(sub, size=(new_h, new_w), mode="bilinear")  # align_corners=False, no antialias
    sub = sub.permute(0, 2, 3, 1).reshape(new_h * new_w, -1)
    return torch.cat([sub, table[old_rows:]])


def torch_relative_position_bias(
    table: torch.Tensor, train_grid: tuple[int, int], grid_hw: tuple[int, int]
) -> torch.Tensor:
    """MiDaS v3.1 `_get_rel_pos_bias`: (heads, N, N) with N = h*w + 1."""
    new_table = torch_resize_table(table, train_grid, grid_hw)
    n = grid_hw[0] * grid_hw[1] + 1
    bias = new_table[torch_relative_position_index(grid_hw).view(-1)].view(n, n, -1)
    return bias.permute(2, 0, 1).contiguous()
