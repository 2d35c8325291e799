"""Fuzz convert_weights with mutated small checkpoints: every outcome is a clean success or a clean exit 2.

Mutations: byte flips in the safetensors header (JSON offsets, dtypes, shapes) and body (tensor bytes), and
truncations, of a valid tiny checkpoint; the same for a torch .pt (a zip archive). A crash would be an exception
escaping `main`, a traceback on stderr, or more than one stderr line.
"""

from __future__ import annotations

import struct

import pytest
import torch
import torch_reference as ref
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from beit_flax.convert.cli import EXIT_BAD_INPUT
from beit_flax.convert.cli import main as convert_main

FUZZ = settings(
    max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(scope="module")
def valid_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz")
    sd = ref.state_dict_v5(ref.build_reference(ref.TINY, seed=0))
    save_file(sd, folder / "tiny.safetensors")
    torch.save(ref.to_midas_layout(sd, ref.TINY), folder / "tiny.pt")
    return {suffix: (folder / f"tiny{suffix}").read_bytes() for suffix in (".safetensors", ".pt")}


def _convert_clean(tmp_path, data: bytes, suffix: str, capsys) -> int:
    src, out = tmp_path / f"mutant{suffix}", tmp_path / "out.msgpack"
    src.write_bytes(data)
    out.unlink(missing_ok=True)
    code = convert_main([str(src), str(out)])
    captured = capsys.readouterr()
    assert code in (0, EXIT_BAD_INPUT), code
    if code == 0:
        assert out.exists() and captured.err == ""
    else:
        assert not out.exists()
        lines = captured.err.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    return code


def _header_length(data: bytes) -> int:
    return 8 + struct.unpack("<Q", data[:8])[0]


@FUZZ
@given(data=st.data())
def test_safetensors_header_flips(valid_files, tmp_path, capsys, data):
    blob = bytearray(valid_files[".safetensors"])
    position = data.draw(st.integers(0, _header_length(blob) - 1), label="position")
    blob[position] ^= data.draw(st.integers(1, 255), label="xor")
    _convert_clean(tmp_path, bytes(blob), ".safetensors", capsys)


@FUZZ
@given(data=st.data())
def test_safetensors_body_flips(valid_files, tmp_path, capsys, data):
    blob = bytearray(valid_files[".safetensors"])
    for _ in range(data.draw(st.integers(1, 8), label="flips")):
        position = data.draw(st.integers(_header_length(blob), len(blob) - 1), label="position")
        blob[position] ^= data.draw(st.integers(1, 255), label="xor")
    _convert_clean(tmp_path, bytes(blob), ".safetensors", capsys)


@FUZZ
@given(data=st.data())
def test_truncations(valid_files, tmp_path, capsys, data):
    suffix = data.draw(st.sampled_from([".safetensors", ".pt"]), label="suffix")
    blob = valid_files[suffix]
    cut = data.draw(st.integers(0, len(blob) - 1), label="cut")
    assert _convert_clean(tmp_path, blob[:cut], suffix, capsys) == EXIT_BAD_INPUT


@FUZZ
@given(data=st.data())
def test_torch_zip_flips(valid_files, tmp_path, capsys, data):
    blob = bytearray(valid_files[".pt"])
    for _ in range(data.draw(st.integers(1, 4), label="flips")):
        position = data.draw(st.integers(0, len(blob) - 1), label="position")
        blob[position] ^= data.draw(st.integers(1, 255), label="xor")
    _convert_clean(tmp_path, bytes(blob), ".pt", capsys)
