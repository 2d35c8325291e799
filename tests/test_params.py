"""params.py: the parameter tree of a config, the check every tree passes, and the one random init."""

from __future__ import annotations

import numpy as np
import pytest
from flax import traverse_util
from tiny_config import TINY

from beit_flax.params import check_params, init_params, param_shapes


def flat(params) -> dict[str, np.ndarray]:
    return traverse_util.flatten_dict(params, sep="/")


def test_init_follows_the_documented_rules():
    """spread 0: lecun-normal kernels, zero biases and tables, unit norms, layer scale 0.1, the head's last bias 1."""
    leaves = flat(init_params(TINY, seed=0))
    assert {p: v.shape for p, v in leaves.items()} == param_shapes(TINY)
    assert all(v.dtype == np.float32 for v in leaves.values())
    kernel = leaves["encoder/block_0/mlp/fc1/kernel"]  # fan-in 32
    assert abs(kernel.std() * np.sqrt(32) - 1) < 0.1
    assert (leaves["encoder/block_0/attn/relative_position/table"] == 0).all()
    assert (leaves["encoder/block_1/norm1/scale"] == 1).all() and (leaves["encoder/block_1/gamma_2"] == 0.1).all()
    assert (leaves["head/conv3/bias"] == 1).all() and (leaves["fusion_1/out_conv/bias"] == 0).all()


def test_init_is_seeded_and_spread_reaches_every_leaf():
    base, again, other = (flat(init_params(TINY, seed=s)) for s in (0, 0, 1))
    assert all(np.array_equal(base[p], again[p]) for p in base)
    assert not np.array_equal(base["patch_embed/proj/kernel"], other["patch_embed/proj/kernel"])
    spread = flat(init_params(TINY, seed=0, spread=0.1))
    for path, value in spread.items():
        assert value.size == 1 or value.std() > 1e-3, f"{path} is constant: it would take no part in a comparison"


def test_check_params_lists_every_problem():
    params = init_params(TINY)
    params["head"]["conv3"]["kernel"] = np.zeros((1, 1, 8, 2), np.float32)
    del params["fusion_1"]["out_conv"]["bias"]
    params["extra"] = {"w": np.zeros(2, np.float32)}
    params["head"]["conv1"]["bias"] = np.zeros(8, np.int32)
    with pytest.raises(ValueError) as info:
        check_params(TINY, params, source="somewhere.msgpack")
    message = str(info.value)
    assert message.startswith("somewhere.msgpack: parameters do not match the config")
    for needle in (
        "head/conv3/kernel has shape (1, 1, 8, 2), config needs (1, 1, 8, 1)",
        "missing fusion_1/out_conv/bias",
        "unexpected extra/w (2,)",
        "head/conv1/bias has dtype int32",
    ):
        assert needle in message
