"""export_weights: torch -> flax -> torch is bit-identical, and the exports load into the original torch models."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch_reference as ref
from safetensors.torch import load_file
from transformers import DPTForDepthEstimation

from beit_flax import load
from beit_flax.convert import open_checkpoint, torch_to_flax
from beit_flax.convert.cli import EXIT_BAD_INPUT, export_main
from beit_flax.convert.cli import main as convert_main
from beit_flax.convert.rules import KINDS
from beit_flax.models.dpt.convert.hf_config import hf_config_dict
from beit_flax.models.dpt.convert.keys import DROPPED
from beit_flax.models.dpt.convert.to_torch import to_torch as flax_to_torch


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """The perturbed tiny reference as a MiDaS .pt and as a transformers (v5 names) state dict, plus our weights."""
    folder = tmp_path_factory.mktemp("export")
    model = ref.build_reference(ref.TINY, seed=3)
    sd_v5 = ref.state_dict_v5(model)
    midas = ref.to_midas_layout(sd_v5, ref.TINY)
    torch.save(midas, folder / "midas.pt")
    assert convert_main([str(folder / "midas.pt"), str(folder / "tiny.msgpack")]) == 0
    return folder, model, sd_v5, midas


def _assert_round_trip(original: dict, exported: dict, layout: str) -> None:
    dropped = [k for k in original if any(re.fullmatch(p, k) for p in DROPPED[layout])]
    mapped = set(original) - set(dropped)
    assert mapped <= set(exported), sorted(mapped - set(exported))[:5]
    assert set(exported) == set(original), "the export must carry exactly the original's tensors"
    for name in mapped:
        a, b = original[name], exported[name]
        assert a.dtype == b.dtype and tuple(a.shape) == tuple(b.shape), name
        assert torch.equal(a, torch.as_tensor(b)), f"{name} differs"


def test_midas_round_trip_is_bit_identical(source, capsys):
    folder, _, _, midas = source
    out = folder / "back.pt"
    assert export_main([str(folder / "tiny.msgpack"), str(out), "--format", "midas"]) == 0
    assert "midas layout" in capsys.readouterr().out
    exported = torch.load(out, weights_only=True)
    _assert_round_trip(midas, exported, "midas")
    # the regenerated index buffers equal the release file's
    for i in range(ref.TINY["depth"]):
        key = f"pretrained.model.blocks.{i}.attn.relative_position_index"
        assert torch.equal(exported[key], midas[key])


@pytest.mark.parametrize("fmt, layout, rename", [("hf", "hf-v4", ref.to_v4_names), ("hf-v5", "hf-v5", lambda sd: sd)])
def test_transformers_round_trip_is_bit_identical(source, fmt, layout, rename):
    folder, _, sd_v5, _ = source
    out = folder / f"back-{fmt}.safetensors"
    assert export_main([str(folder / "tiny.msgpack"), str(out), "--format", fmt]) == 0
    _assert_round_trip(rename(sd_v5), load_file(out), layout)


def test_exported_folder_loads_into_transformers_and_matches(source):
    """`--format hf` to a folder: config.json + model.safetensors that from_pretrained accepts (released head)."""
    folder, _, _, _ = source
    spec = dict(ref.TINY, head_channels=32)  # transformers hard-codes the head's 32 channels
    model = ref.build_reference(spec, seed=5)
    torch.save(ref.to_midas_layout(ref.state_dict_v5(model), spec), folder / "h32.pt")
    assert convert_main([str(folder / "h32.pt"), str(folder / "h32.msgpack")]) == 0
    assert export_main([str(folder / "h32.msgpack"), str(folder / "hf-out"), "--format", "hf"]) == 0
    reloaded = DPTForDepthEstimation.from_pretrained(folder / "hf-out", attn_implementation="eager").eval()
    images = ref.random_images(2, 64, 96, seed=9)
    with torch.inference_mode():
        expected, got = ref.reference_depth(model, images), ref.reference_depth(reloaded, images)
    ref.assert_nondegenerate(expected)
    assert torch.equal(expected, got)
    assert torch_to_flax(open_checkpoint(folder / "hf-out")).config == load(folder / "h32.msgpack")[0].config


def test_midas_export_runs_in_the_functional_midas_forward(source):
    folder, model, _, midas = source
    flax_model, params = load(folder / "tiny.msgpack")
    state = {k: torch.from_numpy(v) for k, v in flax_to_torch(params, flax_model.config, "midas").items()}
    images = ref.random_images(1, 64, 64, seed=2)
    expected = ref.reference_depth(model, images)
    ref.assert_nondegenerate(expected)
    assert torch.equal(ref.midas_forward(state, ref.TINY, images), ref.midas_forward(midas, ref.TINY, images))


def test_bad_output_name_and_bad_weights(source, tmp_path, capsys):
    folder, _, _, _ = source
    assert export_main([str(folder / "tiny.msgpack"), str(tmp_path / "out.txt")]) == EXIT_BAD_INPUT
    assert "use a .pt" in capsys.readouterr().err
    junk = tmp_path / "junk.msgpack"
    junk.write_bytes(b"\x00" * 10)
    assert export_main([str(junk), str(tmp_path / "out.pt")]) == EXIT_BAD_INPUT
    assert not (tmp_path / "out.pt").exists()


# A torch tensor shape per (kind, torch leaf), and the flax shape(s) it must become: the table's layout conventions.
_SHAPES = {
    ("dense", "weight"): ((4, 3), [(3, 4)]),
    ("conv", "weight"): ((4, 3, 2, 5), [(2, 5, 3, 4)]),
    ("param", ""): ((4, 3), [(4, 3)]),
    ("qkv", ""): ((6, 2), [(2, 2)] * 3),
    ("qkv_bias", ""): ((6,), [(2,)] * 3),  # registered by models/zoedepth/convert/keys.py once it loads
    ("qkv_dense", "weight"): ((6, 2), [(2, 2)] * 3),  # DINOv2's fused qkv Linear
    ("qkv_dense", "bias"): ((6,), [(2,)] * 3),
    ("gate_up", "weight"): ((4, 3), [(3, 2)] * 2),  # DINOv2's SwiGLU w12
    ("gate_up", "bias"): ((4,), [(2,)] * 2),
}


def test_table_transforms_are_inverses():
    """Every leaf of the key table: torch -> flax gives the flax layout, and flax -> torch undoes it bit for bit."""
    rng = np.random.default_rng(0)
    for kind, leaves in KINDS.items():
        for torch_leaf, leaf in leaves.items():
            shape, flax_shapes = _SHAPES.get((kind, torch_leaf), ((4,), [(4,)]))  # biases, LayerNorm
            value = rng.standard_normal(shape).astype(np.float32)
            flax = leaf.to_flax(value)
            assert [part.shape for part in flax] == flax_shapes and len(flax) == len(leaf.flax), (kind, torch_leaf)
            np.testing.assert_array_equal(leaf.to_torch(*flax), value)


def test_qkv_rows_are_query_key_value():
    """MiDaS's fused qkv.weight stacks the q, k, v projections' (out, in) weights along rows."""
    q, k, v = (np.full((2, 2), n, np.float32) for n in (1, 2, 3))
    flax = dict(zip(KINDS["qkv"][""].flax, KINDS["qkv"][""].to_flax(np.concatenate([q, k, v]))))
    assert [float(flax[f"{n}/kernel"][0, 0]) for n in ("query", "key", "value")] == [1, 2, 3]


def test_export_without_transformers_writes_a_folder(source, tmp_path):
    """With only the [convert] extra (torch, no transformers), `export_weights --format hf OUT` still writes config.json
    + model.safetensors; the result loads and converts back to the same model."""
    folder, _, _, _ = source
    out = tmp_path / "hf-out"
    code = (
        "import sys; sys.modules['transformers'] = None  # any `import transformers` now raises ImportError\n"
        "from beit_flax.convert.cli import export_main\n"
        f"code = export_main([{str(folder / 'tiny.msgpack')!r}, {str(out)!r}, '--format', 'hf'])\n"
        "assert not [m for m in sys.modules if m.startswith('beit_flax.demo')]\n"
        "sys.exit(code)\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stderr
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    original, back = load(folder / "tiny.msgpack")[0].config, torch_to_flax(open_checkpoint(out))
    assert back.layout == "hf-v4" and back.config == original
    assert json.loads((out / "config.json").read_text()) == hf_config_dict(original)
