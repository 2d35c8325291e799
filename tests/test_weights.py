"""beit_flax.save / load: round trip, atomic writes, and a clear ValueError for every kind of bad file."""

from __future__ import annotations

import os
import stat

import jax
import msgpack
import numpy as np
import pytest
from flax import serialization, traverse_util
from tiny_config import TINY

from beit_flax import FORMAT_VERSION, load, save
from beit_flax.files import atomic_write_bytes
from beit_flax.models.family import _traced as traced_shapes  # the cache of every traced parameter tree
from beit_flax.params import init_params


@pytest.fixture()
def saved(tmp_path):
    path = tmp_path / "tiny.msgpack"
    params = init_params(TINY, spread=1.0)
    save(path, TINY, params)
    return path, params


def test_round_trip_is_exact(saved):
    path, params = saved
    model, loaded = load(path)
    assert model.config == TINY
    flat, flat_loaded = (traverse_util.flatten_dict(p, sep="/") for p in (params, loaded))
    assert flat.keys() == flat_loaded.keys()
    for key, value in flat.items():
        np.testing.assert_array_equal(flat_loaded[key], value)
        assert flat_loaded[key].dtype == np.float32


def test_dtype_is_chosen_when_loading(saved):
    model, _ = load(saved[0], dtype="bfloat16")
    assert model.dtype == "bfloat16" and load(saved[0])[0].dtype == "float32"
    with pytest.raises(ValueError, match="dtype must be one of"):
        load(saved[0], dtype="int8")


def test_version_1_files_with_a_stored_dtype_still_load(saved, tmp_path):
    """Before the compute dtype became a module attribute, files were format version 1 and stored it; they load
    (the stored dtype is ignored), and what `save` writes now stores none."""
    path, params = saved
    _rewrite(path, lambda p: (p.update(format_version=1), p["config"].update(dtype="bfloat16")))
    model, _ = load(path)
    assert model.config == TINY and model.dtype == "float32"
    save(tmp_path / "new.msgpack", TINY, params)
    payload = serialization.msgpack_restore((tmp_path / "new.msgpack").read_bytes())
    assert payload["format_version"] == FORMAT_VERSION == 2 and "dtype" not in payload["config"]


def test_save_refuses_params_that_do_not_fit(tmp_path):
    params = init_params(TINY, spread=1.0)
    params["head"]["conv3"]["kernel"] = np.zeros((1, 1, 8, 2), np.float32)
    del params["fusion_1"]["out_conv"]["bias"]
    with pytest.raises(ValueError) as info:
        save(tmp_path / "bad.msgpack", TINY, params)
    assert "head/conv3/kernel has shape (1, 1, 8, 2), config needs (1, 1, 8, 1)" in str(info.value)
    assert "missing fusion_1/out_conv/bias" in str(info.value)
    assert not list(tmp_path.iterdir())


def _rewrite(path, mutate):
    payload = serialization.msgpack_restore(path.read_bytes())
    mutate(payload)
    path.write_bytes(serialization.msgpack_serialize(payload))


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda p: p.update(format_version=FORMAT_VERSION + 1), f"format version {FORMAT_VERSION + 1}"),
        (lambda p: p.pop("format"), "not a beit-flax weights file"),
        (lambda p: p["config"].update(width=64), "parameters do not match the config"),
        (lambda p: p["config"].pop("depth"), "bad config"),
        (lambda p: p["config"].update(width="wide"), "bad config"),
        (lambda p: p["params"]["head"].pop("conv1"), "missing head/conv1/bias"),
        (lambda p: p["params"]["head"]["conv1"].update(bias=np.zeros(3, np.float32)), "head/conv1/bias has shape (3,)"),
        (lambda p: p["params"]["head"]["conv1"].update(bias=np.zeros(8, np.int32)), "head/conv1/bias has dtype int32"),
        (lambda p: p.update(params=[1, 2]), "no parameter tree"),
        (lambda p: p.update(config=[1, 2]), "bad config: config must be a dict of fields, got a list"),
        (lambda p: p["config"].update(layer_norm_eps=float("nan")), "layer_norm_eps must be a number in (0, 0.001]"),
        (lambda p: p["config"].update(depth=10**5, hooks=[0, 1, 2, 10**5 - 1]), "depth 100000 is over the limit"),
        (lambda p: p["params"]["head"]["conv1"].update(bias="x"), "head/conv1/bias is a str, not a float array"),
    ],
)
def test_bad_payloads_raise_value_error_naming_the_file(saved, mutate, message):
    path, _ = saved
    _rewrite(path, mutate)
    with pytest.raises(ValueError) as info:
        load(path)
    assert str(path) in str(info.value) and message in str(info.value)


def test_non_string_keys_in_the_tree(saved):
    """msgpack maps may have int keys, which flax's own serialization cannot even sort: a ValueError naming them."""
    path, _ = saved
    payload = serialization.msgpack_restore(path.read_bytes())
    payload["params"]["head"][7] = {"x": np.zeros(1, np.float32)}
    path.write_bytes(msgpack.packb(payload, default=serialization._msgpack_ext_pack, strict_types=True))
    with pytest.raises(ValueError, match="unexpected head/7/x"):
        load(path)


def test_the_tree_is_checked_against_the_config_before_tracing(saved):
    """A config that disagrees with its tree's block count fails without tracing the config's model (tracing costs
    ~30 ms and 0.35 MB a block: a small file must not buy minutes of it)."""
    path, _ = saved
    _rewrite(path, lambda p: p["config"].update(depth=40, hooks=[0, 1, 2, 39]))
    misses = traced_shapes.cache_info().misses
    with pytest.raises(ValueError, match=r"the tree has blocks 0\.\.3 \(4\), the config's depth is 40"):
        load(path)
    assert traced_shapes.cache_info().misses == misses


@pytest.mark.parametrize("cut", [0, 1, 100, -1])
def test_truncated_and_garbage_files(saved, cut):
    path, _ = saved
    data = path.read_bytes()
    path.write_bytes(data[:cut] if cut else b"")
    with pytest.raises(ValueError, match=str(path)):
        load(path)


def test_other_msgpack_content(tmp_path):
    path = tmp_path / "list.msgpack"
    path.write_bytes(msgpack.packb([1, 2, 3]))
    with pytest.raises(ValueError, match="not a beit-flax weights file"):
        load(path)
    path.write_bytes(np.random.default_rng(0).bytes(5000))
    with pytest.raises(ValueError, match=str(path)):
        load(path)


def test_loaded_model_runs(saved):
    model, params = load(saved[0])
    depth = jax.jit(model.apply)({"params": params}, np.zeros((1, 32, 48, 3), np.float32))
    assert depth.shape == (1, 32, 48)


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_written_file_gets_the_permissions_open_would_give(tmp_path, umask):
    """0666 minus the umask (not the temp file's 0600), and no temp file left behind."""
    previous = os.umask(umask)
    try:
        atomic_write_bytes(tmp_path / "w.bin", b"data")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "w.bin").stat().st_mode) == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == ["w.bin"]
