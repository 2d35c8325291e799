"""models/dpt/relative_position.py vs direct torch versions of timm's `gen_relative_position_index` and MiDaS v3.1's
`_get_rel_pos_bias` (both in `flax_helpers.py`), on square and non-square grids.

The training grid is square here, as in every released model (for a non-square training grid MiDaS reshapes the old
table as (width, height), a quirk the reference doc says we do not reproduce).
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
import torch
from flax_helpers import (
    assert_close,
    to_numpy,
    torch_relative_position_bias,
    torch_relative_position_index,
    torch_resize_table,
)

from beit_flax.models.dpt.relative_position import (
    RelativePositionBias,
    bias_rows,
    relative_position_bias,
    relative_position_index,
    resize_table,
    table_rows,
)

HEADS = 3
TRAIN = (4, 4)


def _table(train_grid=TRAIN, heads=HEADS, seed=0) -> torch.Tensor:
    rows = (2 * train_grid[0] - 1) * (2 * train_grid[1] - 1) + 3
    return torch.randn(rows, heads, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("grid_hw", [(1, 1), (1, 4), (3, 3), (4, 4), (3, 5), (6, 2), (5, 7), (24, 24), (32, 32)])
def test_index_matches_timm(grid_hw):
    ours = relative_position_index(grid_hw)
    n = grid_hw[0] * grid_hw[1] + 1
    assert ours.shape == (n, n)
    np.testing.assert_array_equal(ours, to_numpy(torch_relative_position_index(grid_hw)))
    rows = (2 * grid_hw[0] - 1) * (2 * grid_hw[1] - 1) + 3
    assert ours.min() == 0 and ours.max() == rows - 1
    # every table row is read: each offset, and the three cls entries
    assert len(np.unique(ours)) == rows


def test_index_spot_values_non_square():
    h, w = 3, 5
    index = relative_position_index((h, w))
    rows = (2 * h - 1) * (2 * w - 1) + 3
    assert index[0, 0] == rows - 1 and index[0, 7] == rows - 3 and index[7, 0] == rows - 2
    # token i = (y1, x1) = (2, 4) -> position 1 + 2*5 + 4 = 15; token j = (0, 1) -> position 2
    assert index[15, 2] == (2 - 0 + h - 1) * (2 * w - 1) + (4 - 1 + w - 1)


def test_same_grid_is_exact_identity():
    table = _table()
    ours = np.asarray(resize_table(jax.numpy.asarray(to_numpy(table)), TRAIN, TRAIN))
    np.testing.assert_array_equal(ours, to_numpy(table))
    np.testing.assert_array_equal(ours, to_numpy(torch_resize_table(table, TRAIN, TRAIN)))
    bias = relative_position_bias(to_numpy(table), TRAIN, TRAIN)
    np.testing.assert_array_equal(np.asarray(bias), to_numpy(torch_relative_position_bias(table, TRAIN, TRAIN)))


@pytest.mark.parametrize(
    "train_grid,grid_hw",
    [
        ((4, 4), (6, 6)),  # larger
        ((4, 4), (2, 2)),  # smaller
        ((4, 4), (3, 5)),  # non-square targets
        ((4, 4), (6, 2)),
        ((4, 4), (1, 7)),
        ((5, 5), (7, 4)),
        ((32, 32), (24, 40)),  # BEiT-L 512 at 384x640
    ],
)
def test_resized_table_and_bias_match_midas(train_grid, grid_hw):
    table = _table(train_grid, seed=grid_hw[0] * 100 + grid_hw[1])
    label = f"rel-pos {train_grid}->{grid_hw}"

    ours_table = resize_table(to_numpy(table), train_grid, grid_hw)
    ref_table = torch_resize_table(table, train_grid, grid_hw)
    assert ours_table.shape == ref_table.shape == ((2 * grid_hw[0] - 1) * (2 * grid_hw[1] - 1) + 3, HEADS)
    assert_close(ours_table, ref_table, label + " table")
    np.testing.assert_array_equal(np.asarray(ours_table[-3:]), to_numpy(table[-3:]))  # cls rows kept as they are

    ours_bias = jax.jit(relative_position_bias, static_argnums=(1, 2))(to_numpy(table), train_grid, grid_hw)
    ref_bias = torch_relative_position_bias(table, train_grid, grid_hw)
    n = grid_hw[0] * grid_hw[1] + 1
    assert ours_bias.shape == (HEADS, n, n)
    assert_close(ours_bias, ref_bias, label + " bias")


@pytest.mark.parametrize("grid_hw", [(1, 1), (1, 6), (3, 5), (6, 2), (4, 4)])
def test_bias_is_exactly_the_index_gather(grid_hw):
    """The sliding-window construction reproduces timm's gather bit for bit (it only moves values)."""
    rng = np.random.default_rng(grid_hw[0] * 10 + grid_hw[1])
    table = rng.standard_normal((table_rows(grid_hw), HEADS)).astype(np.float32)
    gathered = np.transpose(table[relative_position_index(grid_hw)], (2, 0, 1))
    np.testing.assert_array_equal(np.asarray(relative_position_bias(table, grid_hw, grid_hw)), gathered)


def test_module_uses_its_table():
    """The module returns its table resized to the grid; the bias built from that is MiDaS's."""
    table = _table()
    module = RelativePositionBias(HEADS, TRAIN)
    variables = module.init(jax.random.key(0), (3, 5))
    assert variables["params"]["table"].shape == tuple(table.shape)
    resized = module.apply({"params": {"table": to_numpy(table)}}, (3, 5))
    assert resized.shape == (table_rows((3, 5)), HEADS)
    bias = bias_rows(resized, (3, 5), 0, 16)
    assert_close(bias, torch_relative_position_bias(table, TRAIN, (3, 5)), "RelativePositionBias module (3, 5)")


@pytest.mark.parametrize("grid_hw", [(1, 1), (3, 5), (6, 2), (4, 4)])
@pytest.mark.parametrize("count", [1, 3, 7])
def test_bias_rows_are_rows_of_the_bias(grid_hw, count):
    """Any rows, static or traced (a query chunk inside a loop), the cls query's among them or not, are those rows of
    the whole bias bit for bit; rows past the last query repeat it (a last chunk's padding)."""
    rng = np.random.default_rng(grid_hw[0] * 10 + grid_hw[1] + count)
    table = rng.standard_normal((table_rows(grid_hw), HEADS)).astype(np.float32)
    n = grid_hw[0] * grid_hw[1] + 1
    whole = np.asarray(bias_rows(table, grid_hw, 0, n))
    np.testing.assert_array_equal(whole, np.transpose(table[relative_position_index(grid_hw)], (2, 0, 1)))
    traced = jax.jit(lambda first: bias_rows(table, grid_hw, first, count))
    for first in range(0, n, max(1, count - 1)):
        want = whole[:, np.minimum(np.arange(first, first + count), n - 1)]
        np.testing.assert_array_equal(np.asarray(traced(jax.numpy.int32(first))), want, err_msg=f"rows from {first}")
        np.testing.assert_array_equal(np.asarray(bias_rows(table, grid_hw, first, count)), want)
