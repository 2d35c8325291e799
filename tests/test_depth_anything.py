"""Depth Anything (models/depth_anything/): the network, the converter and `infer_image` against the original's
steps re-created in torch (`depth_anything_reference.py`), and the network against transformers'
`DepthAnythingForDepthEstimation` built from a config, an independent implementation (at the position embedding's
training grid, where transformers' interpolation is not used: elsewhere it is not the original's, and the test
measures by how much). fp32 CPU; errors are max |ours - ref| / max |ref|."""

from __future__ import annotations

import json

import cv2
import jax
import numpy as np
import pytest
import torch
from depth_anything_reference import DepthAnythingV2, assert_nondegenerate, perturb, recentre_output
from PIL import Image

import beit_flax
from beit_flax.cli import main as depth_main
from beit_flax.convert.cli import export_main
from beit_flax.convert.cli import main as convert_main
from beit_flax.models.depth_anything import TINY, DepthAnything
from beit_flax.models.depth_anything.config import swiglu_channels
from beit_flax.models.dpt.position_embedding import bicubic_matrix, resize_position_embedding

NETWORK_TOL = 2e-5  # the bar for the network; seen: ~1e-6 (tiny)
PIPELINE_TOL = 1e-4  # the whole infer_image pipeline
SPEC = {  # TINY, stated independently in the original's terms
    "width": 128,
    "depth": 4,
    "heads": 2,
    "hidden": 256,
    "grid": 4,
    "taps": [0, 1, 2, 3],
    "features": 16,
    "out_channels": [8, 16, 32, 32],
    "max_depth": None,
}


def rel_err(ours, ref) -> float:
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


def reference(spec: dict = SPEC, seed: int = 0) -> DepthAnythingV2:
    model = perturb(DepthAnythingV2(spec), seed)
    images = torch.from_numpy(np.random.default_rng(seed).normal(size=(2, 3, 56, 56)).astype(np.float32))
    recentre_output(model, images)
    return model


def convert(model: torch.nn.Module, folder, name: str, *extra: str) -> tuple[object, dict, str]:
    """The original's state dict saved as a release file `name`, converted with convert_weights and loaded."""
    pth, out = folder / name, folder / (name + ".msgpack")
    torch.save(model.state_dict(), pth)
    assert convert_main([str(pth), str(out), *extra]) == 0
    flax_model, params = beit_flax.load(out)
    return flax_model, params, str(out)


def images_nchw(shape: tuple[int, int], batch: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).normal(size=(batch, 3, *shape)).astype(np.float32))


def ours(model, params, x: torch.Tensor) -> np.ndarray:
    return np.asarray(jax.jit(model.apply)({"params": params}, x.permute(0, 2, 3, 1).numpy()))


# --- the position embedding ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("grid_hw", [(5, 7), (3, 3), (4, 9), (10, 4)])
def test_position_embedding_resize_is_the_originals(grid_hw):
    """bicubic with scale_factor = (side + 0.1) / g, torch's own resize; transformers' size= rule differs."""
    g, c = 4, 6
    table = torch.randn(1, 1 + g * g, c, generator=torch.Generator().manual_seed(0))
    h, w = grid_hw
    grid = table[:, 1:].reshape(1, g, g, c).permute(0, 3, 1, 2)
    scale = ((h + 0.1) / g, (w + 0.1) / g)
    expected = torch.nn.functional.interpolate(grid, scale_factor=scale, mode="bicubic", antialias=False)
    expected = expected.permute(0, 2, 3, 1).reshape(1, h * w, c)
    got = np.asarray(resize_position_embedding(table.numpy(), grid_hw))
    assert got.shape == (1, 1 + h * w, c)
    np.testing.assert_array_equal(got[:, 0], table[:, 0].numpy())
    assert rel_err(got[:, 1:], expected) < 1e-6
    by_size = torch.nn.functional.interpolate(grid, size=grid_hw, mode="bicubic", align_corners=False)
    by_size = by_size.permute(0, 2, 3, 1).reshape(1, h * w, c)
    assert rel_err(np.asarray(resize_position_embedding(table.numpy(), grid_hw, offset=None))[:, 1:], by_size) < 1e-6
    assert rel_err(got[:, 1:], by_size) > 1e-3  # the two rules are different computations


def test_position_embedding_is_unchanged_at_its_grid():
    table = np.random.default_rng(0).normal(size=(1, 17, 3)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(resize_position_embedding(table, (4, 4))), table)
    assert np.allclose(bicubic_matrix(4, 4, None), np.eye(4))


# --- network and converter against the original ----------------------------------------------------------------------


def test_release_file_converts_exports_and_loads_strictly_into_the_original(tmp_path, capsys):
    ref = reference()
    model, _, weights = convert(ref, tmp_path, "depth_anything_v2_vits.pth")
    summary = capsys.readouterr().out
    assert type(model) is DepthAnything and "release layout" in summary and "relative (nothing says metric" in summary
    assert model.config == TINY
    back = tmp_path / "back.pth"
    assert export_main([weights, str(back), "--format", "release"]) == 0
    state = torch.load(back, weights_only=True)
    fresh = DepthAnythingV2(SPEC)
    fresh.load_state_dict(state, strict=True)  # the original's loading accepts the export
    original = ref.state_dict()
    for name, tensor in original.items():
        if name == "pretrained.mask_token" or ".refinenet4.resConfUnit1." in name:
            continue  # unused by the model: exported as zeros
        assert torch.equal(state[name], tensor), name


@pytest.mark.parametrize("shape", [(56, 56), (70, 98), (42, 126)])
def test_network_matches_the_original(tmp_path, shape):
    """At the training grid (56 = 4 x 14) and at grids where the position embedding is interpolated."""
    ref = reference()
    model, params, _ = convert(ref, tmp_path, "depth_anything_v2_vits.pth")
    x = images_nchw(shape)
    with torch.no_grad():
        expected = ref(x).numpy()
    assert_nondegenerate(expected)
    got = ours(model, params, x)
    assert got.shape == expected.shape
    err = rel_err(got, expected)
    print(f"Depth Anything tiny {shape}: {err:.2e}")
    assert err < NETWORK_TOL, err


@pytest.mark.parametrize("layout", ["hf", "hf-v5"])
def test_swiglu_encoder_as_vitg(tmp_path, layout):
    """ViT-G's SwiGLU FFN (the original's fused w12, transformers' weights_in / gate_proj + up_proj), tiny."""
    from transformers import DepthAnythingForDepthEstimation

    spec = SPEC | {"swiglu": True, "hidden": swiglu_channels(SPEC["width"])}
    ref = reference(spec, seed=1)
    model, params, weights = convert(ref, tmp_path, "depth_anything_v2_vitg.pth")
    assert model.config.ffn == "swiglu" and model.config.ffn_channels == 344
    x = images_nchw((56, 70))
    with torch.no_grad():
        expected = ref(x).numpy()
    assert_nondegenerate(expected)
    assert rel_err(ours(model, params, x), expected) < NETWORK_TOL
    assert export_main([weights, str(tmp_path / "hf"), "--format", layout]) == 0
    hf = DepthAnythingForDepthEstimation.from_pretrained(tmp_path / "hf").eval()
    x = images_nchw((56, 56), seed=1)  # the images `reference` centred the output on
    with torch.no_grad():
        expected = ref(x).numpy()
        assert_nondegenerate(expected)
        assert rel_err(hf(pixel_values=x).predicted_depth.numpy(), expected) < NETWORK_TOL


@pytest.mark.parametrize(
    ("name", "extra", "meters", "says"),
    [
        ("depth_anything_v2_metric_hypersim_vits.pth", (), 20.0, "(file name"),
        ("depth_anything_v2_metric_vkitti_vits.pth", (), 80.0, "(file name"),
        ("my_finetune.pth", ("--max-depth", "15"), 15.0, "(--max-depth)"),
    ],
)
def test_metric_models(tmp_path, capsys, name, extra, meters, says):
    spec = SPEC | {"max_depth": meters}
    ref = reference(spec)
    model, params, _ = convert(ref, tmp_path, name, *extra)
    assert model.config.max_depth == meters and f"max depth {meters:g} m {says}" in capsys.readouterr().out
    x = images_nchw((70, 84))
    with torch.no_grad():
        expected = ref(x).numpy()
    assert_nondegenerate(expected)
    assert expected.max() < meters
    assert rel_err(ours(model, params, x), expected) < NETWORK_TOL


def test_max_depth_is_refused_for_families_that_say_their_output(tmp_path, capsys):
    from torch_reference import TINY as DPT_TINY
    from torch_reference import state_dict_v5, to_midas_layout

    from beit_flax.demo.torch_model import build_reference

    midas = to_midas_layout(state_dict_v5(build_reference(DPT_TINY, seed=0)), DPT_TINY)
    torch.save(midas, tmp_path / "dpt.pt")
    assert convert_main([str(tmp_path / "dpt.pt"), str(tmp_path / "o.msgpack"), "--max-depth", "10"]) == 2
    assert "--max-depth is not for MiDaS" in capsys.readouterr().err


def test_v1_file_name_means_the_last_four_blocks(tmp_path, capsys):
    spec = SPEC | {"depth": 6, "taps": [2, 3, 4, 5]}
    ref = reference(spec)
    model, params, _ = convert(ref, tmp_path, "depth_anything_vits14.pth")
    assert model.config.taps == (2, 3, 4, 5) and "V1 (the last four blocks)" in capsys.readouterr().out
    x = images_nchw((56, 70))
    with torch.no_grad():
        expected = ref(x).numpy()
    assert rel_err(ours(model, params, x), expected) < NETWORK_TOL


# --- transformers, an independent reference ---------------------------------------------------------------------------


def transformers_model(max_depth: float | None = None):
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config

    backbone = Dinov2Config(
        hidden_size=128,
        num_hidden_layers=4,
        num_attention_heads=2,
        mlp_ratio=2,
        image_size=56,
        patch_size=14,
        out_indices=[1, 2, 3, 4],
        apply_layernorm=True,
        reshape_hidden_states=False,
        layer_norm_eps=1e-6,
    )
    config = DepthAnythingConfig(
        backbone_config=backbone,
        neck_hidden_sizes=[8, 16, 32, 32],
        fusion_hidden_size=16,
        reassemble_hidden_size=128,
        patch_size=14,
        head_hidden_size=32,
        depth_estimation_type="metric" if max_depth else "relative",
        max_depth=max_depth or 1,
    )
    model = DepthAnythingForDepthEstimation(config).eval()
    perturb(model, seed=3)
    with torch.no_grad():  # most pixels positive after the final ReLU
        raw = model(pixel_values=images_nchw((56, 56))).predicted_depth
        model.head.conv3.bias += 1.0 - raw.median().clamp(max=0)
    return model


def test_transformers_folder_matches_and_differs_from_the_original_off_grid(tmp_path, capsys):
    from safetensors.torch import save_file

    hf = transformers_model()
    folder = tmp_path / "Depth-Anything-V2-Tiny-hf"
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in hf.state_dict().items()}, folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps(hf.config.to_dict()))
    assert convert_main([str(folder), str(tmp_path / "hf.msgpack")]) == 0
    assert "hf-v5 layout" in capsys.readouterr().out
    model, params = beit_flax.load(tmp_path / "hf.msgpack")
    assert model.config.taps == (0, 1, 2, 3) and model.config.ffn_channels == 256

    x = images_nchw((56, 56))
    with torch.no_grad():
        expected = hf(pixel_values=x).predicted_depth.numpy()
    assert_nondegenerate(expected)
    err = rel_err(ours(model, params, x), expected)
    print(f"vs transformers at the training grid: {err:.2e}")
    assert err < NETWORK_TOL

    # off the training grid transformers interpolates the position embedding to size=, not the original's rule
    x = images_nchw((70, 98))
    with torch.no_grad():
        theirs = hf(pixel_values=x).predicted_depth.numpy()
    assert export_main([str(tmp_path / "hf.msgpack"), str(tmp_path / "o.pth"), "--format", "release"]) == 0
    original = DepthAnythingV2(SPEC)
    original.load_state_dict(torch.load(tmp_path / "o.pth", weights_only=True), strict=True)
    with torch.no_grad():
        truth = original(x).numpy()
    assert rel_err(ours(model, params, x), truth) < NETWORK_TOL
    apart = rel_err(theirs, truth)
    print(f"transformers vs the original at 70 x 98 (tiny): {apart:.2e}")
    assert apart > 1e-4


@pytest.mark.parametrize("layout", ["hf", "hf-v5"])
def test_export_hf_folder_loads_in_transformers(tmp_path, layout):
    """transformers 5 loads the v5 names as they are and the v4 names (the hub folders') through its own renaming
    table for Dinov2 (`conversion_mapping.py`): both give the original's output."""
    from transformers import DepthAnythingForDepthEstimation

    ref = reference(SPEC | {"max_depth": 20.0})
    _, _, weights = convert(ref, tmp_path, "depth_anything_v2_metric_hypersim_vits.pth")
    assert export_main([weights, str(tmp_path / "hf"), "--format", layout]) == 0
    hf, info = DepthAnythingForDepthEstimation.from_pretrained(tmp_path / "hf", output_loading_info=True)
    assert not any(info.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    x = images_nchw((56, 56))
    with torch.no_grad():
        expected = ref(x).numpy()
        assert_nondegenerate(expected)
        assert rel_err(hf.eval()(pixel_values=x).predicted_depth.numpy(), expected) < NETWORK_TOL


# --- the infer_image pipeline -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("image_hw", "size"), [((75, 100), 56), ((90, 40), 70), ((30, 30), 56)])
def test_predict_is_infer_image(tmp_path, image_hw, size):
    ref = reference()
    model, params, _ = convert(ref, tmp_path, "depth_anything_v2_vits.pth")
    rgb = np.random.default_rng(5).integers(0, 256, (*image_hw, 3), dtype=np.uint8)
    expected = ref.infer_image(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), size)
    got = beit_flax.predict(model, params, [rgb], net_size=size)[0]
    assert got.shape == image_hw and got.dtype == np.float32
    assert_nondegenerate(expected)
    err = rel_err(got, expected)
    print(f"infer_image {image_hw} at {size}: {err:.2e}")
    assert err < PIPELINE_TOL


def test_cli_predict_metric_with_point_cloud(tmp_path):
    ref = reference(SPEC | {"max_depth": 20.0})
    model, params, weights = convert(ref, tmp_path, "depth_anything_v2_metric_hypersim_vits.pth")
    rgb = np.random.default_rng(6).integers(0, 256, (60, 80, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "room.png")
    out = tmp_path / "out"
    argv = ["predict", str(tmp_path / "room.png"), "--weights", weights, "--size", "56", "--out", str(out), "--ply"]
    assert depth_main([*argv, "-q"]) == 0
    depth = np.load(out / "room.npy")
    np.testing.assert_array_equal(depth, beit_flax.predict(model, params, [rgb], net_size=56)[0])
    with Image.open(out / "room.png") as png:
        assert png.text["depth_range_m"] == "0 20"
    assert (out / "room.ply").stat().st_size > 0
    assert depth_main([*argv, "--no-flip", "-q"]) == 2  # no test-time flip in this pipeline


@pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")  # imageio-ffmpeg: fork + exec at once
def test_video_export_and_a_training_step(tmp_path):
    """The application layer on a Depth Anything file: `beit-depth video`, `export --format stablehlo` (sizes in
    multiples of 14) and one train step with the family's loss (relative: ssimae; metric: silog)."""
    import imageio.v2 as imageio
    import optax

    from beit_flax import training
    from beit_flax.training.data import make_batch

    _, _, weights = convert(reference(), tmp_path, "depth_anything_v2_vits.pth")
    clip = tmp_path / "clip.mp4"
    rng = np.random.default_rng(8)
    with imageio.get_writer(clip, fps=5, codec="libx264", macro_block_size=1) as writer:
        for _ in range(4):
            writer.append_data(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
    out = tmp_path / "depth.mp4"
    assert depth_main(["video", str(clip), "--weights", weights, "--size", "56", "--out", str(out), "-q"]) == 0
    assert out.stat().st_size > 0

    hlo = tmp_path / "da.stablehlo"
    argv = ["export", "--weights", weights, "--format", "stablehlo", "--platforms", "cpu", "--out", str(hlo)]
    assert depth_main([*argv, "--size", "56x70"]) == 0
    model, params = beit_flax.load(weights)
    x = np.random.default_rng(9).normal(size=(1, 56, 70, 3)).astype(np.float32)
    exported = jax.export.deserialize(bytearray(hlo.read_bytes()))
    reference_out = np.asarray(model.apply({"params": params}, x))
    assert rel_err(np.asarray(exported.call(x)), reference_out) < 1e-5
    assert depth_main([*argv, "--size", "64"]) == 2  # not a multiple of 14
    import onnxruntime

    onnx = tmp_path / "da.onnx"
    assert depth_main(["export", "--weights", weights, "--format", "onnx", "--size", "56x70", "--out", str(onnx)]) == 0
    session = onnxruntime.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
    assert rel_err(session.run(None, {session.get_inputs()[0].name: x})[0], reference_out) < 1e-5

    for max_depth, loss in ((None, "ssimae"), (20.0, "silog-da")):
        config = model.config.replace(max_depth=max_depth)
        net = beit_flax.FAMILIES["depth_anything"].build(config)
        state = training.create_train_state(net, params, optax.adam(1e-3))
        assert state.loss == loss and state.input_multiple == 14
        images = rng.integers(0, 256, (2, 28, 28, 3), dtype=np.uint8)
        depth = rng.uniform(0.5, 10.0, (2, 28, 28)).astype(np.float32)
        batch = make_batch(images, depth, np.ones(depth.shape, bool), target=training.LOSS_TARGETS[loss])
        _, metrics = training.jit_train_step(state, batch)
        assert np.isfinite(float(metrics["loss"])) and float(metrics["grad_norm"]) > 0


def test_a_known_name_downloads_from_its_release_url_and_reads_metric_from_the_file_name(tmp_path, monkeypatch):
    """A name for `depth_anything_v2_metric_indoor_small`'s release URL and licence, from a release server on
    127.0.0.1 standing in for the hub's resolve URL (the file is a tiny model, so the name is registered here with
    the tiny architecture: the real name promises ViT-S and refuses it): downloaded, converted as metric by its file
    name, and the summary line states the weights' licence."""
    from hub_helpers import release_server

    from beit_flax.hub import KNOWN, Known
    from beit_flax.predictor import Predictor

    real = KNOWN["depth_anything_v2_metric_indoor_small"]
    name = "tiny_depth_anything_metric_indoor"
    monkeypatch.setitem(KNOWN, name, Known(name, real.url, real.repo, None, real.family, real.licence, TINY))
    ref = reference(SPEC | {"max_depth": 20.0})
    pth = tmp_path / "model.pth"
    torch.save(ref.state_dict(), pth)
    path = real.url.removeprefix("https://huggingface.co")
    assert path.endswith("/depth_anything_v2_metric_hypersim_vits.pth")
    with release_server() as server:
        server.files[path] = pth.read_bytes()
        monkeypatch.setenv("BEIT_FLAX_WEIGHTS_DIR", str(tmp_path / "cache"))
        monkeypatch.setenv("BEIT_FLAX_RELEASE_MIRROR", server.url)
        monkeypatch.setenv("BEIT_FLAX_CACHE_DIR", "off")
        for var in ("BEIT_FLAX_OFFLINE", "HF_HUB_OFFLINE"):
            monkeypatch.delenv(var, raising=False)
        predictor = Predictor(name, size=56)
    assert predictor.output.units == "meters" and predictor.family.name == "depth_anything"
    assert "weights licence Apache-2.0" in predictor.describe()
    rgb = np.random.default_rng(10).integers(0, 256, (56, 70, 3), dtype=np.uint8)
    expected = ref.infer_image(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), 56)
    assert rel_err(predictor.depth(rgb), expected) < PIPELINE_TOL


# --- full size -----------------------------------------------------------------------------------------------------


def released_spec(encoder: str, max_depth: float | None = None) -> dict:
    """The original's `model_configs` (its README), stated here: width, depth, heads, features, out_channels."""
    width, depth, heads, features, out_channels, taps = {
        "vits": (384, 12, 6, 64, [48, 96, 192, 384], [2, 5, 8, 11]),
        "vitl": (1024, 24, 16, 256, [256, 512, 1024, 1024], [4, 11, 17, 23]),
    }[encoder]
    return {
        "width": width,
        "depth": depth,
        "heads": heads,
        "hidden": 4 * width,
        "grid": 37,
        "taps": taps,
        "features": features,
        "out_channels": out_channels,
        "max_depth": max_depth,
    }


@pytest.mark.full_size
@pytest.mark.parametrize(
    ("max_depth", "name"), [(None, "depth_anything_v2_vits.pth"), (20.0, "depth_anything_v2_metric_hypersim_vits.pth")]
)
def test_full_size_vits_network_and_infer_image(tmp_path, max_depth, name):
    """ViT-S V2 relative and metric (Hypersim): the converter names the preset; the network at 518 x 518 and off
    the training grid, and `infer_image` on a 480 x 640 photo-sized input."""
    ref = reference(released_spec("vits", max_depth))
    model, params, _ = convert(ref, tmp_path, name)
    preset = "depth_anything_v2_small" if max_depth is None else "depth_anything_v2_metric_indoor_small"
    assert model.config == beit_flax.FAMILIES["depth_anything"].presets[preset]
    for shape in ((518, 518), (392, 518)):
        x = images_nchw(shape, batch=1)
        with torch.no_grad():
            expected = ref(x).numpy()
        assert_nondegenerate(expected)
        err = rel_err(ours(model, params, x), expected)
        print(f"ViT-S {'metric' if max_depth else 'relative'} {shape}: {err:.2e}")
        assert err < NETWORK_TOL
    rgb = np.random.default_rng(7).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    expected = ref.infer_image(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    err = rel_err(beit_flax.predict(model, params, [rgb])[0], expected)
    print(f"ViT-S infer_image 480 x 640: {err:.2e}")
    assert err < PIPELINE_TOL


@pytest.mark.full_size
def test_full_size_vitl_network(tmp_path):
    ref = reference(released_spec("vitl"))
    model, params, _ = convert(ref, tmp_path, "depth_anything_v2_vitl.pth")
    assert model.config == beit_flax.FAMILIES["depth_anything"].presets["depth_anything_v2_large"]
    x = images_nchw((518, 518), batch=1)
    with torch.no_grad():
        expected = ref(x).numpy()
    assert_nondegenerate(expected)
    err = rel_err(ours(model, params, x), expected)
    print(f"ViT-L 518 x 518: {err:.2e}")
    assert err < NETWORK_TOL


@pytest.mark.full_size
def test_full_size_transformers_is_not_the_original_off_the_training_grid(tmp_path):
    """The same ViT-S weights in transformers (our hf export, loaded strictly by from_pretrained): equal to the
    original at 518 x 518, apart elsewhere (its position-embedding interpolation); the figure is printed."""
    from transformers import DepthAnythingForDepthEstimation

    ref = reference(released_spec("vits"))
    _, _, weights = convert(ref, tmp_path, "depth_anything_v2_vits.pth")
    assert export_main([weights, str(tmp_path / "hf"), "--format", "hf-v5"]) == 0
    hf = DepthAnythingForDepthEstimation.from_pretrained(tmp_path / "hf").eval()
    for shape, apart in (((518, 518), False), ((392, 518), True), ((518, 686), True)):
        x = images_nchw(shape, batch=1)
        with torch.no_grad():
            expected = ref(x).numpy()
            assert_nondegenerate(expected)
            err = rel_err(hf(pixel_values=x).predicted_depth.numpy(), expected)
        print(f"transformers vs the original, ViT-S {shape}: {err:.2e}")
        assert (err > 1e-4) if apart else (err < NETWORK_TOL)
