"""convert/: every checkpoint layout converts to the same parameters, and the converted model matches torch.

The torch reference is transformers' DPTForDepthEstimation with a BEiT backbone, built from a config with every
parameter perturbed (tests/torch_reference.py). Tolerance: max|ours - torch| / max|torch| <= 1e-4 (we see ~5e-6).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch_reference as ref
from flax import traverse_util
from safetensors.torch import save_file

from beit_flax import DPT, PRESETS, load
from beit_flax.convert import ConversionError, open_checkpoint, torch_to_flax
from beit_flax.convert.cli import EXIT_BAD_INPUT
from beit_flax.convert.cli import main as convert_main

TOLERANCE = 1e-4


def relative_error(ours: np.ndarray, theirs: np.ndarray) -> float:
    return float(np.abs(np.asarray(ours) - np.asarray(theirs)).max() / np.abs(theirs).max())


def flax_depth(model, params, images_nchw: torch.Tensor) -> np.ndarray:
    images = jnp.asarray(images_nchw.permute(0, 2, 3, 1).numpy())
    return np.asarray(jax.jit(model.apply)({"params": params}, images))


@pytest.fixture(scope="module")
def tiny():
    model = ref.build_reference(ref.TINY, seed=0)
    return model, ref.state_dict_v5(model)


@pytest.fixture(scope="module")
def tiny_files(tiny, tmp_path_factory):
    """The tiny reference saved in every layout the converter reads."""
    model, sd_v5 = tiny
    folder = tmp_path_factory.mktemp("ckpt")
    (folder / "hf").mkdir()
    model.save_pretrained(folder / "hf")  # config.json + model.safetensors (transformers 5 saves the v4 hub names)
    save_file(sd_v5, folder / "v5.safetensors")  # the names of transformers 5's own modules
    save_file(ref.to_v4_names(sd_v5), folder / "v4.safetensors")
    torch.save(ref.to_v4_names(sd_v5), folder / "v4.bin")
    midas = ref.to_midas_layout(sd_v5, ref.TINY)
    torch.save(midas, folder / "midas.pt")
    torch.save({"model": midas, "optimizer": {"step": torch.tensor(3)}}, folder / "midas_wrapped.pt")
    torch.save({k: v.to(torch.bfloat16) for k, v in midas.items()}, folder / "midas_bf16.pt")
    save_file({k: v.half() for k, v in sd_v5.items()}, folder / "v5_fp16.safetensors")
    return folder


def convert(path):
    return torch_to_flax(open_checkpoint(path))


def test_all_layouts_give_identical_params(tiny_files):
    expected = convert(tiny_files / "hf")
    assert expected.layout == "hf-v4"
    flat_expected = traverse_util.flatten_dict(expected.params, sep="/")
    for name, layout in [
        ("v5.safetensors", "hf-v5"),
        ("v4.safetensors", "hf-v4"),
        ("v4.bin", "hf-v4"),
        ("midas.pt", "midas"),
        ("midas_wrapped.pt", "midas"),
    ]:
        got = convert(tiny_files / name)
        assert got.layout == layout
        # a bare file has no config.json: hooks come from the depth rule, which TINY follows
        assert dataclasses.replace(got.config, layer_norm_eps=expected.config.layer_norm_eps) == expected.config
        flat = traverse_util.flatten_dict(got.params, sep="/")
        assert flat.keys() == flat_expected.keys()
        for path, value in flat_expected.items():
            np.testing.assert_array_equal(flat[path], value, err_msg=f"{name}: {path}")


def test_midas_layout_drops_exactly_the_unused_tensors(tiny_files):
    got = convert(tiny_files / "midas.pt")
    dropped = set(got.dropped)
    assert {k for k in dropped if "relative_position_index" in k} == {
        f"pretrained.model.blocks.{i}.attn.relative_position_index" for i in range(ref.TINY["depth"])
    }
    assert {k for k in dropped if "relative_position_index" not in k} == {
        "pretrained.model.fc_norm.weight",
        "pretrained.model.fc_norm.bias",
        "pretrained.model.head.weight",
        "pretrained.model.head.bias",
        *(f"scratch.refinenet4.resConfUnit1.conv{c}.{leaf}" for c in (1, 2) for leaf in ("weight", "bias")),
    }


@pytest.mark.parametrize("name", ["midas_bf16.pt", "v5_fp16.safetensors"])
def test_half_precision_checkpoints_are_widened(tiny_files, name):
    full = traverse_util.flatten_dict(convert(tiny_files / "midas.pt").params, sep="/")
    half = traverse_util.flatten_dict(convert(tiny_files / name).params, sep="/")
    for path, value in half.items():
        assert value.dtype == np.float32
        np.testing.assert_allclose(value, full[path], rtol=1e-2, atol=1e-2, err_msg=path)


@pytest.mark.parametrize(
    "batch, height, width",
    [(1, 64, 64), (2, 64, 96), (3, 96, 32)],  # the training grid, wide, tall; all multiples of 32
)
def test_tiny_matches_transformers(tiny, tiny_files, batch, height, width):
    model_pt, _ = tiny
    converted = convert(tiny_files / "hf")
    images = ref.random_images(batch, height, width, seed=height + width)
    expected = ref.reference_depth(model_pt, images).numpy()
    ref.assert_nondegenerate(expected)
    ours = flax_depth(DPT(converted.config), converted.params, images)
    assert ours.shape == (batch, height, width) and ours.dtype == np.float32
    assert relative_error(ours, expected) <= TOLERANCE


@pytest.mark.parametrize("height, width", [(80, 48), (48, 112), (16, 16)])
def test_tiny_matches_midas_rule_off_multiples_of_32(tiny, tiny_files, height, width):
    """At multiples of 16 but not 32, transformers' fusion differs from MiDaS; we follow MiDaS."""
    _, sd_v5 = tiny
    converted = convert(tiny_files / "midas.pt")
    images = ref.random_images(2, height, width, seed=7)
    expected = ref.midas_forward(ref.to_midas_layout(sd_v5, ref.TINY), ref.TINY, images).numpy()
    ref.assert_nondegenerate(expected)
    ours = flax_depth(DPT(converted.config), converted.params, images)
    assert ours.shape == (2, height, width)
    assert relative_error(ours, expected) <= TOLERANCE


def test_cli_writes_a_loadable_file(tiny, tiny_files, tmp_path, capsys):
    out = tmp_path / "tiny.msgpack"
    assert convert_main([str(tiny_files / "midas.pt"), str(out)]) == 0
    summary = capsys.readouterr().out.strip().splitlines()
    assert len(summary) == 1 and "midas layout" in summary[0] and "parameters" in summary[0]
    model, params = load(out)
    images = ref.random_images(1, 64, 96, seed=3)
    expected = ref.reference_depth(tiny[0], images).numpy()
    assert relative_error(flax_depth(model, params, images), expected) <= TOLERANCE
    assert not [p for p in tmp_path.iterdir() if p.name != "tiny.msgpack"]  # no temp files left behind


def test_config_json_hooks_and_eps_are_read(tiny_files, tmp_path):
    import json
    import shutil

    folder = tmp_path / "hf"
    shutil.copytree(tiny_files / "hf", folder)
    config = json.loads((folder / "config.json").read_text())
    config["backbone_config"]["layer_norm_eps"] = 1e-12
    (folder / "config.json").write_text(json.dumps(config))
    got = convert(folder)
    assert got.config.layer_norm_eps == 1e-12
    assert got.config.hooks == (0, 1, 2, 3)


def test_unknown_and_missing_keys_are_listed(tiny, tmp_path):
    _, sd_v5 = tiny
    midas = ref.to_midas_layout(sd_v5, ref.TINY)
    extra = dict(midas, **{"pretrained.model.surprise.weight": torch.ones(3)})
    torch.save(extra, tmp_path / "extra.pt")
    with pytest.raises(ConversionError, match=r"unexpected keys: pretrained\.model\.surprise\.weight"):
        convert(tmp_path / "extra.pt")
    missing = {k: v for k, v in midas.items() if k != "scratch.refinenet2.out_conv.bias"}
    torch.save(missing, tmp_path / "missing.pt")
    with pytest.raises(ConversionError, match=r"missing.*fusion_2/out_conv/bias"):
        convert(tmp_path / "missing.pt")


def test_cli_bad_input_exits_2_without_output(tmp_path, capsys):
    bad = tmp_path / "random.pt"
    bad.write_bytes(np.random.default_rng(0).bytes(4096))
    out = tmp_path / "out.msgpack"
    assert convert_main([str(bad), str(out)]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(bad) in err[0]
    assert not out.exists()


@pytest.mark.full_size
def test_base_384_full_size_matches_transformers(tmp_path):
    """The released BEiT-B 384 configuration at full size, non-square input, batch 2, both layouts."""
    spec = ref.PRESETS["dpt_beit_base_384"]
    model_pt = ref.build_reference(spec, seed=1)
    sd_v5 = ref.state_dict_v5(model_pt)
    torch.save(ref.to_midas_layout(sd_v5, spec), tmp_path / "dpt_beit_base_384.pt")
    converted = convert(tmp_path / "dpt_beit_base_384.pt")
    assert converted.model_name == "dpt_beit_base_384"
    assert converted.config == PRESETS["dpt_beit_base_384"]

    images = ref.random_images(2, 384, 512, seed=11)
    expected = ref.reference_depth(model_pt, images).numpy()
    ref.assert_nondegenerate(expected)
    ours = flax_depth(DPT(converted.config), converted.params, images)
    error = relative_error(ours, expected)
    print(f"base_384 @384x512 batch 2: max rel error {error:.2e}")
    assert error <= TOLERANCE

    # 16-not-32 size against the MiDaS rule
    images = ref.random_images(1, 400, 336, seed=12)
    expected = ref.midas_forward(ref.to_midas_layout(sd_v5, spec), spec, images).numpy()
    ref.assert_nondegenerate(expected)
    error = relative_error(flax_depth(DPT(converted.config), converted.params, images), expected)
    print(f"base_384 @400x336 (MiDaS rule): max rel error {error:.2e}")
    assert error <= TOLERANCE
