"""`DPTConfig` and the three presets vs the released models' table (MiDaS v3.1 README and `midas/dpt_depth.py`).

Also: validation errors, dict/JSON round trips, and the parameter counts of `params.param_shapes` against the
published totals (345.0M / 344.3M / 111.5M) minus the checkpoint weights the model never uses.
"""

from __future__ import annotations

import json
import math

import pytest
from tiny_config import TINY

from beit_flax.files import MAX_WEIGHTS_BYTES
from beit_flax.models.dpt import config as bounds
from beit_flax.models.dpt.config import PRESETS, DPTConfig, default_hooks
from beit_flax.params import param_shapes
from beit_flax.transforms import DEFAULT_MAX_PIXELS

# name: (width, depth, heads, patch, train grid, hooks, reassemble channels, net size, table rows)
TABLE = {
    "dpt_beit_large_512": (1024, 24, 16, 16, (32, 32), (5, 11, 17, 23), (256, 512, 1024, 1024), 512, 3972),
    "dpt_beit_large_384": (1024, 24, 16, 16, (24, 24), (5, 11, 17, 23), (256, 512, 1024, 1024), 384, 2212),
    "dpt_beit_base_384": (768, 12, 12, 16, (24, 24), (2, 5, 8, 11), (96, 192, 384, 768), 384, 2212),
}

# Published parameter counts (MiDaS v3.1 README, in millions) and the exact counts of the release state dicts
# (sum of every tensor in `*.midas-keys.tsv` except the `relative_position_index` buffers).
PUBLISHED_M = {"dpt_beit_large_512": 345.0, "dpt_beit_large_384": 344.3, "dpt_beit_base_384": 111.5}
CHECKPOINT_PARAMS = {
    "dpt_beit_large_512": 345_014_441,
    "dpt_beit_large_384": 344_338_601,
    "dpt_beit_base_384": 111_531_689,
}


def unused_params(config: DPTConfig) -> int:
    """Weights in the checkpoint that inference never reads: classifier head, fc_norm, refinenet4's first RCU."""
    c, f = config.width, config.fusion_channels
    head = 1000 * c + 1000
    fc_norm = 2 * c
    refinenet4_rcu1 = 2 * (f * f * 9 + f)
    return head + fc_norm + refinenet4_rcu1


def tiny(**changes) -> DPTConfig:
    return TINY.replace(**changes)


@pytest.mark.parametrize("name", sorted(TABLE))
def test_presets_match_reference_table(name):
    width, depth, heads, patch, grid, hooks, channels, net, rows = TABLE[name]
    cfg = PRESETS[name]
    assert (cfg.width, cfg.depth, cfg.num_heads, cfg.patch_size) == (width, depth, heads, patch)
    assert (cfg.train_grid, cfg.hooks, cfg.reassemble_channels) == (grid, hooks, channels)
    assert (cfg.fusion_channels, cfg.head_channels, cfg.net_size) == (256, 32, net)
    assert cfg.layer_norm_eps == 1e-6
    assert cfg.table_rows == rows
    assert cfg.hooks == default_hooks(cfg.depth)


def test_presets_cover_exactly_the_released_models():
    assert set(PRESETS) == set(TABLE)


@pytest.mark.parametrize(
    "changes,message",
    [
        (dict(width=30, num_heads=4), "width 30 is not divisible by num_heads 4"),
        (dict(hooks=(0, 1, 2)), "hooks must be a list of 4 ints"),
        (dict(reassemble_channels=(8, 16, 32)), "reassemble_channels must be a list of 4 ints"),
        (dict(hooks=(0, 1, 2, 4)), "hooks (0, 1, 2, 4) must be increasing block indices in [0, depth=4)"),
        (dict(hooks=(-1, 1, 2, 3)), "must be increasing block indices"),
        (dict(hooks=(1, 0, 2, 3)), "must be increasing block indices"),
        (dict(hooks=(0, 1, 1, 3)), "must be increasing block indices"),
        (dict(train_grid=(0, 4)), "train_grid[0] must be a positive int, got 0"),
        (dict(train_grid=(4,)), "train_grid must be a list of 2 ints"),
        (dict(hooks=(0, 1, 2, "3")), "must be increasing block indices"),
        (dict(num_heads=0), "num_heads must be a positive int, got 0"),
        (dict(width=-32), "width must be a positive int, got -32"),
        (dict(patch_size=0), "patch_size must be a positive int"),
        (dict(patch_size=8), "patch_size must be 16 (the DPT decoder upsamples the patch grid 16x)"),
        (dict(fusion_channels=0), "fusion_channels must be a positive int"),
        (dict(head_channels=0), "head_channels must be a positive int"),
    ],
)
def test_invalid_config_raises_clear_error(changes, message):
    with pytest.raises(ValueError, match="invalid DPTConfig") as info:
        tiny(**changes)
    assert message in str(info.value)


# every field's bound (config.py), one past it
OVER_THE_LIMIT = {
    "width": bounds.MAX_WIDTH * 2,
    "depth": bounds.MAX_DEPTH + 1,
    "num_heads": bounds.MAX_HEADS + 1,
    "patch_size": bounds.PATCH_SIZE + 1,
    "train_grid": (bounds.MAX_GRID + 1, 4),
    "reassemble_channels": (8, 16, 32, bounds.MAX_CHANNELS + 1),
    "fusion_channels": bounds.MAX_CHANNELS + 1,
    "head_channels": bounds.MAX_CHANNELS + 1,
    "net_size": bounds.MAX_NET_SIZE + 1,
}


@pytest.mark.parametrize("field", sorted(OVER_THE_LIMIT))
def test_every_size_has_a_bound(field):
    """A weights file or checkpoint saying depth=100000 (or a huge grid, width, net size) is refused when the config
    is made, before anything is traced or allocated."""
    with pytest.raises(ValueError, match="over the limit of"):
        tiny(**{field: OVER_THE_LIMIT[field]})


@pytest.mark.parametrize(
    "changes",
    [
        dict(width=32.0),
        dict(depth="4"),
        dict(num_heads=True),
        dict(net_size=None),
        dict(train_grid=4),
        dict(train_grid="ab"),
        dict(hooks=None),
        dict(reassemble_channels=[8, 16, 32, 32.5]),
        dict(patch_size=[16]),
    ],
)
def test_wrong_types_are_value_errors(changes):
    """What JSON / msgpack can hold in place of an int: one ValueError naming the field, never a TypeError."""
    with pytest.raises(ValueError, match="invalid DPTConfig") as info:
        tiny(**changes)
    assert next(iter(changes)) in str(info.value)


@pytest.mark.parametrize("eps", [float("nan"), float("inf"), -1e-6, 0.0, 0, 1.0, "abc", "1e-6", True, None, [1e-6]])
def test_layer_norm_eps_must_be_a_small_positive_number(eps):
    """NaN, negative or zero eps gives an all-NaN depth map: refused with the value, whatever its type."""
    with pytest.raises(ValueError, match=r"layer_norm_eps must be a number in \(0, 0.001\], got"):
        tiny(layer_norm_eps=eps)
    assert tiny(layer_norm_eps=1e-12).layer_norm_eps == 1e-12


def test_from_dict_refuses_what_is_not_a_dict_of_fields():
    for value in (None, 5, [1, 2], "config"):
        with pytest.raises(ValueError, match="config must be a dict of fields"):
            DPTConfig.from_dict(value)
    with pytest.raises(ValueError, match=r"unknown \['7'\]"):
        DPTConfig.from_dict({**tiny().to_dict(), 7: "x"})


def test_bounds_fit_the_largest_weights_file():
    """MAX_WEIGHTS_BYTES (the largest weights file `load` reads) holds the largest model the bounds allow, and the
    largest config net size is the default pixel limit's side."""
    largest = DPTConfig(
        width=bounds.MAX_WIDTH,
        depth=bounds.MAX_DEPTH,
        num_heads=bounds.MAX_HEADS,
        train_grid=(bounds.MAX_GRID,) * 2,
        hooks=default_hooks(bounds.MAX_DEPTH),
        reassemble_channels=(bounds.MAX_CHANNELS,) * 4,
        fusion_channels=bounds.MAX_CHANNELS,
        head_channels=bounds.MAX_CHANNELS,
        net_size=bounds.MAX_NET_SIZE,
    )
    shapes = param_shapes(largest)
    framing = 1024 * len(shapes)  # msgpack: key, ext header, shape and dtype per leaf
    assert 4 * sum(math.prod(s) for s in shapes.values()) + framing <= MAX_WEIGHTS_BYTES
    assert bounds.MAX_NET_SIZE**2 == DEFAULT_MAX_PIXELS


def test_all_problems_reported_at_once():
    with pytest.raises(ValueError) as info:
        tiny(width=30, num_heads=4, hooks=(3, 2, 1, 0))
    assert "divisible" in str(info.value) and "hooks" in str(info.value)


def test_from_dict_rejects_unknown_fields():
    with pytest.raises(ValueError, match=r"unknown \['colour'\]"):
        DPTConfig.from_dict({**tiny().to_dict(), "colour": "red"})


def test_from_dict_rejects_missing_fields():
    """A truncated config must not silently become the large-512 defaults."""
    with pytest.raises(ValueError, match=r"missing \['depth'"):
        DPTConfig.from_dict({k: v for k, v in tiny().to_dict().items() if k not in ("depth", "hooks")})


@pytest.mark.parametrize("name", sorted(TABLE))
def test_dict_and_json_round_trip(name):
    cfg = PRESETS[name].replace(layer_norm_eps=1e-12)
    assert DPTConfig.from_dict(cfg.to_dict()) == cfg
    # JSON / msgpack turn tuples into lists; the config turns them back (and stays hashable for flax).
    loaded = DPTConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert isinstance(json.loads(json.dumps(cfg.to_dict()))["hooks"], list)
    assert loaded == cfg
    assert isinstance(loaded.hooks, tuple) and isinstance(loaded.train_grid, tuple)
    assert isinstance(loaded.reassemble_channels, tuple)
    assert hash(loaded) == hash(cfg)


def test_compute_dtype_is_not_architecture():
    """The compute dtype is a module attribute: the config has no such field, and a version-1 weights file's config,
    which stored one, still reads (the stored value is ignored)."""
    assert "dtype" not in tiny().to_dict()
    with pytest.raises(TypeError):
        tiny(dtype="bfloat16")
    assert DPTConfig.from_dict({**tiny().to_dict(), "dtype": "bfloat16"}) == tiny()


@pytest.mark.parametrize("name", sorted(TABLE))
def test_parameter_count_matches_release_minus_unused(name):
    cfg = PRESETS[name]
    ours = sum(math.prod(shape) for shape in param_shapes(cfg).values())
    expected = CHECKPOINT_PARAMS[name] - unused_params(cfg)
    print(f"[params] {name}: ours {ours:,}, checkpoint {CHECKPOINT_PARAMS[name]:,} - unused {unused_params(cfg):,}")
    assert abs(ours - (PUBLISHED_M[name] * 1e6 - unused_params(cfg))) <= 0.05e6
    assert ours == expected
