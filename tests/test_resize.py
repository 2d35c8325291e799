"""`beit_flax.models.dpt.resize` vs `torch.nn.functional.interpolate(mode="bilinear")`, both align_corners settings.

Covers upsampling, downsampling (torch does no antialiasing), non-integer ratios, size 1 on either side and
different ratios on the two axes; `interpolation_matrix` rows must sum to 1 and an unchanged size must be an exact
identity.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flax_helpers import assert_close, nchw_to_nhwc
from hypothesis import given, settings
from hypothesis import strategies as st

from beit_flax.models.dpt.resize import interpolation_matrix, resize_bilinear, resize_bilinear_dense

# Every new shape costs an XLA compile, so the end-to-end property test keeps few examples; the cheap numpy check of
# the sampling rule itself runs more.
FEW = settings(max_examples=6, deadline=None, derandomize=True)
MANY = settings(max_examples=60, deadline=None, derandomize=True)
SIZES = st.tuples(st.integers(1, 40), st.integers(1, 40))


def _compare(in_hw, out_hw, seed=0, batch=2, channels=3):
    """Both functions and both align_corners modes in one jitted call (one XLA compile per shape: a fast file)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, channels, *in_hw, generator=gen) + 0.5
    variants = [(resize, ac) for resize in (resize_bilinear, resize_bilinear_dense) for ac in (True, False)]
    every = jax.jit(lambda v: [resize(v, out_hw, align_corners=ac) for resize, ac in variants])
    for ours, (resize, align_corners) in zip(every(nchw_to_nhwc(x)), variants):
        assert ours.shape == (batch, *out_hw, channels)
        assert ours.dtype == np.float32
        label = f"{resize.__name__} {in_hw}->{out_hw} align_corners={align_corners}"
        ref = F.interpolate(x, size=out_hw, mode="bilinear", align_corners=align_corners)
        assert_close(ours, nchw_to_nhwc(ref), label)
        # torch fp32 rounds its source coordinates in float32 (about 1e-5 relative at 63 -> 47); our weights come
        # from float64, so against torch in float64 we are much tighter.
        ref64 = F.interpolate(x.double(), size=out_hw, mode="bilinear", align_corners=align_corners)
        assert_close(ours, nchw_to_nhwc(ref64), label + " vs torch float64", tol=1e-6)


CASES = [
    ((13, 7), (25, 14)),  # fusion path at a multiple-of-16 (not 32) input: not an exact doubling
    ((25, 13), (50, 26)),  # exact doubling
    ((7, 13), (3, 25)),  # down on one axis, up on the other
    ((1, 5), (5, 1)),  # size 1 on each side
    ((5, 1), (1, 5)),
    ((6, 6), (11, 17)),  # relative-position table 4x4 train grid -> (6, 9) grid
    ((63, 63), (47, 47)),  # table of a 32x32 train grid -> 24x24 grid
    ((8, 9), (8, 9)),  # unchanged
]


@pytest.mark.parametrize("in_hw,out_hw", CASES)
def test_resize_matches_torch(in_hw, out_hw):
    _compare(in_hw, out_hw)


@FEW
@given(in_hw=SIZES, out_hw=SIZES)
def test_resize_matches_torch_random_sizes(in_hw, out_hw):
    _compare(in_hw, out_hw, batch=1, channels=2)


@MANY
@given(in_hw=SIZES, out_hw=SIZES, align_corners=st.booleans())
def test_interpolation_matrices_reproduce_torch(in_hw, out_hw, align_corners):
    """The separable rule itself, in numpy: rows @ x @ cols.T == F.interpolate(x) for one channel."""
    x = torch.randn(1, 1, *in_hw, generator=torch.Generator().manual_seed(in_hw[0] * 41 + in_hw[1]))
    ref = F.interpolate(x.double(), size=out_hw, mode="bilinear", align_corners=align_corners)[0, 0]
    rows = interpolation_matrix(in_hw[0], out_hw[0], align_corners).astype(np.float64)
    cols = interpolation_matrix(in_hw[1], out_hw[1], align_corners).astype(np.float64)
    ours = rows @ x[0, 0].double().numpy() @ cols.T
    assert np.max(np.abs(ours - ref.numpy())) <= 1e-6 * np.max(np.abs(ref.numpy()))


@pytest.mark.parametrize("align_corners", [True, False])
def test_unchanged_size_is_exact_identity(align_corners):
    x = np.random.default_rng(0).standard_normal((2, 9, 14, 3)).astype(np.float32)
    for resize in (resize_bilinear, resize_bilinear_dense):
        np.testing.assert_array_equal(np.asarray(resize(x, (9, 14), align_corners=align_corners)), x)


@MANY
@given(in_size=st.integers(1, 64), out_size=st.integers(1, 64), align_corners=st.booleans())
def test_interpolation_matrix_rows_sum_to_one(in_size, out_size, align_corners):
    m = interpolation_matrix(in_size, out_size, align_corners)
    assert m.shape == (out_size, in_size)
    assert m.dtype == np.float32
    assert (m >= 0).all()
    assert ((m != 0).sum(axis=1) <= 2).all()  # bilinear: at most two taps per output sample
    np.testing.assert_allclose(m.sum(axis=1), 1.0, rtol=0, atol=1e-6)
