"""convert_weights on hostile or wrong input: one clear stderr line, documented exit code, no output, no code run."""

from __future__ import annotations

import io
import json
import pickle
import struct
import zipfile

import jax
import numpy as np
import pytest
import torch
import torch_reference as ref
from safetensors.torch import save_file

from beit_flax.convert.cli import EXIT_BAD_INPUT, EXIT_CANNOT_WRITE
from beit_flax.convert.cli import main as convert_main


@pytest.fixture(scope="module")
def midas_sd():
    return ref.to_midas_layout(ref.state_dict_v5(ref.build_reference(ref.TINY, seed=0)), ref.TINY)


def run(capsys, checkpoint, output) -> tuple[int, str]:
    code = convert_main([str(checkpoint), str(output)])
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, f"expected one stderr line, got: {captured.err!r}"
    assert "Traceback" not in captured.err
    return code, lines[0]


class _RunsCode:
    """Unpickling this would create a marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _bad_files(tmp_path, midas_sd):
    """(name, bytes or writer) of inputs that must be refused with exit 2."""
    good = io.BytesIO()
    torch.save(midas_sd, good)
    good = good.getvalue()
    marker = tmp_path / "pwned"
    evil = io.BytesIO()
    torch.save({"pretrained.model.cls_token": _RunsCode(marker)}, evil)
    nan_sd = dict(midas_sd)
    gamma = "pretrained.model.blocks.1.gamma_1"
    nan_sd[gamma] = torch.full_like(nan_sd[gamma], float("nan"))
    wrong_shape = dict(midas_sd)
    wrong_shape["scratch.refinenet2.out_conv.weight"] = torch.ones(16, 16, 3, 3)
    int_tensor = dict(midas_sd)
    int_tensor["pretrained.model.blocks.1.gamma_1"] = int_tensor["pretrained.model.blocks.1.gamma_1"].to(torch.int32)
    return marker, {
        "empty.pt": b"",
        "truncated.pt": good[: len(good) // 2],
        "random.pt": np.random.default_rng(1).bytes(10_000),
        "evil.pt": evil.getvalue(),
        "not_a_state_dict.pt": _torch_bytes([1, 2, 3]),
        "nan.pt": _torch_bytes(nan_sd),
        "wrong_shape.pt": _torch_bytes(wrong_shape),
        "vit.pt": _torch_bytes(
            {
                "pretrained.model.pos_embed": torch.ones(1, 577, 32),
                "pretrained.model.blocks.0.attn.qkv.weight": torch.ones(96, 32),
            }
        ),
        "swin.pt": _torch_bytes(
            {"pretrained.model.layers.0.blocks.0.attn.relative_position_bias_table": torch.ones(4, 2)}
        ),
        "hybrid.pt": _torch_bytes(
            {
                "pretrained.model.patch_embed.backbone.stem.conv.weight": torch.ones(4, 3, 7, 7),
                "pretrained.model.pos_embed": torch.ones(1, 577, 32),
            }
        ),
        "levit.pt": _torch_bytes({"pretrained.model.stages.0.blocks.0.attn.attention_biases": torch.ones(4, 16)}),
        "nextvit.pt": _torch_bytes({"pretrained.model.stem.0.conv.weight": torch.ones(4, 3, 3, 3)}),
        "midas_v21.pt": _torch_bytes({"pretrained.layer1.0.weight": torch.ones(4, 3, 3, 3)}),
        "unrelated.pt": _torch_bytes({"fc.weight": torch.ones(2, 2)}),
        "truncated.safetensors": _safetensors_bytes(tmp_path, ref.state_dict_v5(ref.build_reference(ref.TINY)))[:500],
        "int_tensor.pt": _torch_bytes(int_tensor),
        **{f"{name}.safetensors": data for name, data in _bad_safetensors().items()},
    }


def _torch_bytes(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _safetensors(header: dict, body: bytes, length: int | None = None) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text) if length is None else length) + text + body


def _bad_safetensors() -> dict[str, bytes]:
    """safetensors files whose header lies (read here with pread, so each lie must be caught before reading)."""
    entry = lambda **changes: {"t": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16], **changes}}
    return {
        "offsets_outside": _safetensors(entry(data_offsets=[0, 10**12], shape=[250_000_000_000]), bytes(16)),
        "size_mismatch": _safetensors(entry(shape=[3, 2]), bytes(16)),
        "negative_shape": _safetensors(entry(shape=[-2, -2]), bytes(16)),
        "unknown_dtype": _safetensors(entry(dtype="Q9"), bytes(16)),
        "header_too_long": _safetensors(entry(), bytes(16), length=10**9),
        "header_not_json": struct.pack("<Q", 5) + b"{{{{{" + bytes(16),
        "header_not_object": _safetensors([1, 2], bytes(16)),  # type: ignore[arg-type]
    }


def _safetensors_bytes(tmp_path, sd) -> bytes:
    path = tmp_path / "scratch.safetensors"
    save_file(sd, path)
    return path.read_bytes()


EXPECTED_MESSAGES = {
    "empty.pt": "cannot read checkpoint",
    "truncated.pt": "cannot read checkpoint",
    "random.pt": "cannot read checkpoint",
    "evil.pt": "cannot read checkpoint",
    "not_a_state_dict.pt": "not a state dict",
    "nan.pt": "pretrained.model.blocks.1.gamma_1 has non-finite values",
    "wrong_shape.pt": "scratch.refinenet2.out_conv.weight has shape (16, 16, 3, 3), config needs (16, 16, 1, 1)",
    "vit.pt": "looks like a ViT",
    "swin.pt": "looks like a Swin",
    "hybrid.pt": "looks like a DPT-Hybrid",
    "levit.pt": "looks like a LeViT",
    "nextvit.pt": "looks like a Next-ViT",
    "midas_v21.pt": "looks like a MiDaS v2.x",
    "unrelated.pt": "not a checkpoint of a known model family (a MiDaS v3.1 BEiT release",
    "truncated.safetensors": "cannot read checkpoint",
    "int_tensor.pt": "pretrained.model.blocks.1.gamma_1 is a int32 tensor (parameters are float32 / float16 / "
    "bfloat16)",
    "offsets_outside.safetensors": "not a valid safetensors file (t: data offsets [0, 1000000000000]",
    "size_mismatch.safetensors": "not a valid safetensors file (t: data offsets [0, 16] for a float32 tensor of shape "
    "(3, 2))",
    "negative_shape.safetensors": "not a valid safetensors file (t: shape [-2, -2])",
    "unknown_dtype.safetensors": "not a valid safetensors file (t: no known dtype)",
    "header_too_long.safetensors": "not a valid safetensors file (header length 1000000000 for a file of",
    "header_not_json.safetensors": "not a valid safetensors file (header is not JSON",
    "header_not_object.safetensors": "not a valid safetensors file (header is not a JSON object)",
}


def test_bad_inputs_exit_2_with_one_line_and_no_output(tmp_path, capsys, midas_sd):
    marker, files = _bad_files(tmp_path, midas_sd)
    out = tmp_path / "out.msgpack"
    out.write_bytes(b"precious")  # an existing output must survive a failed conversion
    for name, data in files.items():
        path = tmp_path / name
        path.write_bytes(data)
        code, line = run(capsys, path, out)
        assert code == EXIT_BAD_INPUT, (name, line)
        assert EXPECTED_MESSAGES[name] in line, (name, line)
        assert line.startswith("convert_weights: ")
        assert out.read_bytes() == b"precious", name
        assert not marker.exists(), "unpickling ran code"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temp files left


def test_missing_input_and_folder_without_weights(tmp_path, capsys):
    out = tmp_path / "out.msgpack"
    code, line = run(capsys, tmp_path / "nope.pt", out)
    assert code == EXIT_BAD_INPUT and "no such file" in line
    code, line = run(capsys, tmp_path, out)
    assert code == EXIT_BAD_INPUT and "no model.safetensors or pytorch_model.bin" in line
    assert not out.exists()


def test_output_problems_exit_3(tmp_path, capsys, midas_sd):
    checkpoint = tmp_path / "midas.pt"
    torch.save(midas_sd, checkpoint)
    code, line = run(capsys, checkpoint, tmp_path / "missing_folder" / "out.msgpack")
    assert code == EXIT_CANNOT_WRITE and "does not exist" in line
    (tmp_path / "a_folder.msgpack").mkdir()  # the output path is a folder: the final rename fails
    code, line = run(capsys, checkpoint, tmp_path / "a_folder.msgpack")
    assert code == EXIT_CANNOT_WRITE and "cannot write" in line
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_debug_flag_shows_the_traceback(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError):
        convert_main([str(bad), str(tmp_path / "out.msgpack"), "--debug"])


def test_zip_bomb_like_archive_is_refused_cleanly(tmp_path, capsys):
    """A zip that claims to be a torch archive but holds junk records."""
    path = tmp_path / "junk.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps({"a": 1}, protocol=2)[:-1])
    code, line = run(capsys, path, tmp_path / "out.msgpack")
    assert code == EXIT_BAD_INPUT and "cannot read checkpoint" in line


def test_config_json_values_are_checked_naming_the_file(tmp_path, capsys, midas_sd):
    """transformers' config.json beside the weights: unreadable JSON, wrong types and out-of-range values are one line
    naming config.json (they were "cannot read checkpoint (ValueError: ...)" or, for NaN eps, a NaN model)."""
    from safetensors.torch import save_file

    folder = tmp_path / "hub"
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in midas_sd.items()}, folder / "model.safetensors")
    config = folder / "config.json"
    cases = {
        "{not json": "config.json: not valid JSON",
        "[1, 2]": "config.json: not a JSON object",
        '{"backbone_config": [1]}': "config.json: backbone_config is not an object",
        '{"backbone_config": {"out_indices": ["1", "2", "3", "4"]}}': "out_indices ['1', '2', '3', '4'] is not a list",
        '{"backbone_config": {"out_features": ["s1", "s2"]}}': "out_features ['s1', 's2'] is not a list of 'stageN'",
        '{"backbone_config": {"out_indices": [1, 2, 3, 9]}}': "hooks (0, 1, 2, 8) must be increasing block indices",
        '{"backbone_config": {"layer_norm_eps": NaN}}': "layer_norm_eps must be a number in (0, 0.001], got nan",
        '{"backbone_config": {"layer_norm_eps": "1e-6"}}': "layer_norm_eps '1e-6' is not a number",
    }
    for text, message in cases.items():
        config.write_text(text)
        code, line = run(capsys, folder, tmp_path / "out.msgpack")
        assert code == EXIT_BAD_INPUT and message in line and "config.json" in line, (text, line)
    assert not (tmp_path / "out.msgpack").exists()


def test_half_precision_tensors_convert(tmp_path, midas_sd):
    """fp16 and bf16 checkpoints (read by torch, and by the safetensors reader here: bf16 is float32's upper half)."""
    from safetensors.torch import save_file

    from beit_flax.convert import open_checkpoint, torch_to_flax

    reference = torch_to_flax(open_checkpoint(_write(tmp_path / "fp32.pt", midas_sd))).params
    for dtype in (torch.float16, torch.bfloat16):
        half = {k: v.to(dtype) if v.is_floating_point() else v for k, v in midas_sd.items()}
        widened = {k: v.float() if v.is_floating_point() else v for k, v in half.items()}
        torch.save(half, tmp_path / "half.pt")
        save_file({k: v.contiguous() for k, v in half.items()}, tmp_path / "half.safetensors")
        expected = torch_to_flax(open_checkpoint(_write(tmp_path / "widened.pt", widened))).params
        for name in ("half.pt", "half.safetensors"):
            got = torch_to_flax(open_checkpoint(tmp_path / name)).params
            for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected), strict=True):
                np.testing.assert_array_equal(a, b)
        assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(reference), jax.tree.leaves(expected)))


def _write(path, sd):
    torch.save(sd, path)
    return path
