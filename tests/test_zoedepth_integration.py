"""ZoeDepth in the package: weights files that know their model, convert_weights / export_weights, the hub family,
`predict` against a torch run of the original's `infer_pil` steps, and `beit-depth predict / video`.

The tiny models are transformers' ZoeDepth with every weight perturbed (`beit_flax.demo.zoedepth_torch`), saved as a
hub folder (config.json) and converted, as in tests/test_zoedepth_convert.py.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flax import serialization, traverse_util
from PIL import Image
from tiny_config import TINY

import beit_flax
from beit_flax import weights
from beit_flax.convert import open_checkpoint
from beit_flax.convert.cli import export_main
from beit_flax.convert.cli import main as convert_main
from beit_flax.demo import zoedepth_torch as zt
from beit_flax.demo.torch_model import assert_nondegenerate
from beit_flax.models.zoedepth import ZoeDepth
from beit_flax.models.zoedepth.convert.to_flax import to_flax as zoedepth_torch_to_flax
from beit_flax.models.zoedepth.convert.to_torch import to_torch as zoedepth_flax_to_torch
from beit_flax.models.zoedepth.transforms import pad_sizes, target_size
from beit_flax.params import check_params, init_params, param_shapes
from beit_flax.transforms import resize_bilinear_align_corners

torch.set_num_threads(min(2, os.cpu_count() or 1))

TINY_CONFIGS = zt.tiny_configs(TINY)
PIPELINE_TOLERANCE = 1e-4  # max |ours - torch| / max |torch| over the image


def _flat(params) -> dict[str, np.ndarray]:
    return traverse_util.flatten_dict(params, sep="/")


def same_tree(a, b) -> None:
    fa, fb = _flat(a), _flat(b)
    assert fa.keys() == fb.keys()
    for path in fa:
        np.testing.assert_array_equal(np.asarray(fa[path]), np.asarray(fb[path]), err_msg=path)


@pytest.fixture(scope="module", params=sorted(TINY_CONFIGS))
def tiny(request, tmp_path_factory):
    """(name, config, torch reference, hub folder, converted params)."""
    config = TINY_CONFIGS[request.param]
    model = zt.build_reference(config, seed=5)
    folder = tmp_path_factory.mktemp(f"zoe_{request.param}") / "hub"
    model.save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(
        json.dumps({"size": {"height": config.net_size[0], "width": config.net_size[1]}})
    )
    converted = zoedepth_torch_to_flax(open_checkpoint(folder))
    assert converted.config == config
    return request.param, config, model, folder, converted.params


# --- weights files ---------------------------------------------------------------------------------------------------


def test_weights_file_round_trip_knows_its_model(tiny, tmp_path):
    _, config, _, _, params = tiny
    path = tmp_path / "zoe.msgpack"
    weights.save(path, config, params)
    payload = serialization.msgpack_restore(path.read_bytes())
    assert payload["model"] == "zoedepth" and payload["format_version"] == weights.FORMAT_VERSION
    model, loaded = weights.load(path, dtype="bfloat16")
    assert isinstance(model, ZoeDepth) and model.config == config and model.dtype == "bfloat16"
    same_tree(loaded, params)


def test_dpt_files_store_their_kind_and_old_files_are_dpt(tmp_path):
    params = init_params(TINY)
    weights.save(tmp_path / "dpt.msgpack", TINY, params)
    payload = serialization.msgpack_restore((tmp_path / "dpt.msgpack").read_bytes())
    assert payload["model"] == "dpt"
    del payload["model"]  # as every file written before ZoeDepth
    (tmp_path / "old.msgpack").write_bytes(serialization.msgpack_serialize(payload))
    model, _ = weights.load(tmp_path / "old.msgpack")
    assert type(model) is beit_flax.DPT and model.config == TINY
    payload["model"] = "unet"
    (tmp_path / "odd.msgpack").write_bytes(serialization.msgpack_serialize(payload))
    with pytest.raises(ValueError, match=r"odd.msgpack: unknown model kind 'unet'"):
        weights.load(tmp_path / "odd.msgpack")
    payload["model"] = "zoedepth"  # a DPT config under the ZoeDepth kind
    (tmp_path / "mixed.msgpack").write_bytes(serialization.msgpack_serialize(payload))
    with pytest.raises(ValueError, match=r"mixed.msgpack: bad config: ZoeDepth config fields"):
        weights.load(tmp_path / "mixed.msgpack")


def test_check_params_dispatches_on_the_config():
    config = TINY_CONFIGS["nk"]
    params = init_params(config, seed=1)
    assert {p: v.shape for p, v in _flat(params).items()} == param_shapes(config)
    assert _flat(params)["core/head/conv3/bias"][0] == 1.0
    check_params(config, params)
    with pytest.raises(ValueError, match=r"the tree has blocks 0\.\.3 \(4\), the config's depth is 6"):
        check_params(config.replace(core=config.core.replace(depth=6, hooks=(0, 1, 2, 5))), params)
    with pytest.raises(ValueError, match="missing router/"):
        check_params(config, {k: v for k, v in params.items() if k != "router"})
    with pytest.raises(ValueError, match="no encoder blocks"):
        check_params(TINY, params)  # a ZoeDepth tree is no DPT's


# --- convert_weights / export_weights --------------------------------------------------------------------------------


def test_convert_and_export_weights(tiny, tmp_path, capsys):
    _, config, _, folder, params = tiny
    out = tmp_path / "zoe.msgpack"
    assert convert_main([str(folder), str(out)]) == 0
    line = capsys.readouterr().out
    assert line.startswith(f"converted custom ZoeDepth ({len(config.bins)} bin heads") and "(hf-v4 layout)" in line
    assert "M parameters, " in line and "unused tensors dropped" in line
    model, loaded = weights.load(out)
    assert isinstance(model, ZoeDepth) and model.config == config
    same_tree(loaded, params)

    # release layout: {"model": state_dict}, the names and tensors of `zoedepth_flax_to_torch(..., "release")`
    assert export_main([str(out), str(tmp_path / "zoe.pt")]) == 0
    assert "(release layout)" in capsys.readouterr().out
    saved = torch.load(tmp_path / "zoe.pt", weights_only=True)
    expected = zoedepth_flax_to_torch(params, config, "release")
    assert list(saved) == ["model"] and saved["model"].keys() == expected.keys()
    for key, value in expected.items():
        np.testing.assert_array_equal(saved["model"][key].numpy(), value, err_msg=key)
    # a tiny model is no released preset: convert_weights says so (the release files themselves need no config)
    assert convert_main([str(tmp_path / "zoe.pt"), str(tmp_path / "again.msgpack")]) == 2
    assert "matches none of the released configs" in capsys.readouterr().err
    same_tree(zoedepth_torch_to_flax(open_checkpoint(tmp_path / "zoe.pt"), config=config).params, params)

    # transformers folders (v4 and v5 names) convert back to the same file
    for fmt in ("hf", "hf-v5"):
        assert export_main([str(out), str(tmp_path / fmt), "--format", fmt]) == 0
        assert json.loads((tmp_path / fmt / "config.json").read_text())["model_type"] == "zoedepth"
        assert convert_main([str(tmp_path / fmt), str(tmp_path / f"{fmt}.msgpack")]) == 0
        back, back_params = weights.load(tmp_path / f"{fmt}.msgpack")
        assert back.config == config.replace(net_size=back.config.net_size)  # config.json holds no net size
        same_tree(back_params, params)
    capsys.readouterr()


def test_known_zoedepth_names_are_enabled(tmp_path, monkeypatch):
    from beit_flax.hub import NotCachedError, resolve

    monkeypatch.setenv("BEIT_FLAX_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setenv("BEIT_FLAX_OFFLINE", "1")
    with pytest.raises(NotCachedError, match=r"zoedepth_nyu is not cached .*ZoeD_M12_N\.pt"):
        resolve("zoedepth_nyu", progress=False)


# --- predict: the original's infer_pil steps in torch ----------------------------------------------------------------


def torch_infer(model, image_u8: np.ndarray, net_hw: tuple[int, int], pad: bool, flip: bool) -> np.ndarray:
    """`DepthModel.infer_pil(img, pad_input=pad, with_flip_aug=flip)` with transformers' ZoeDepth as `self(x)`:
    ToTensor, reflect pad, PrepForMidas (minimal resize, bilinear align_corners=True, (x - 0.5) / 0.5), the model,
    bicubic back to the padded size, crop; flipped and averaged."""
    x = torch.from_numpy(np.array(image_u8)).permute(2, 0, 1)[None].float() / 255.0

    def once(x: torch.Tensor) -> torch.Tensor:
        pad_h, pad_w = (int(np.sqrt(x.shape[2] / 2) * 3), int(np.sqrt(x.shape[3] / 2) * 3)) if pad else (0, 0)
        if pad:
            x = F.pad(x, [pad_w, pad_w, pad_h, pad_h], mode="reflect")
        h, w = x.shape[2:]
        scale_h, scale_w = net_hw[0] / h, net_hw[1] / w
        scale_h = scale_w = scale_w if abs(1 - scale_w) < abs(1 - scale_h) else scale_h
        size = (int(np.round(scale_h * h / 32) * 32), int(np.round(scale_w * w / 32) * 32))
        net = (F.interpolate(x, size, mode="bilinear", align_corners=True) - 0.5) / 0.5
        out = zt.reference_outputs(model, net)[0][:, None]
        out = F.interpolate(out, (h, w), mode="bicubic", align_corners=False)
        return out[:, :, pad_h : h - pad_h, pad_w : w - pad_w]

    with torch.no_grad():
        out = once(x)
        if flip:
            out = (out + torch.flip(once(torch.flip(x, dims=[3])), dims=[3])) / 2
    return out[0, 0].numpy()


def photo(height: int, width: int, seed: int) -> np.ndarray:
    """A smooth RGB image with some edges (uint8)."""
    rng = np.random.default_rng(seed)
    small = rng.uniform(0, 255, (max(2, height // 8), max(2, width // 8), 3)).astype(np.float32)
    image = np.asarray(Image.fromarray(small.astype(np.uint8)).resize((width, height), Image.BILINEAR))
    return np.ascontiguousarray(image)


def test_resize_rules_are_torchs():
    image = np.random.default_rng(0).uniform(0, 1, (37, 53, 3)).astype(np.float32)
    for size in ((64, 96), (32, 32), (37, 20), (1, 5)):
        theirs = (
            F.interpolate(torch.from_numpy(image).permute(2, 0, 1)[None], size, mode="bilinear", align_corners=True)[0]
            .permute(1, 2, 0)
            .numpy()
        )
        np.testing.assert_allclose(resize_bilinear_align_corners(image, size), theirs, atol=2e-6)
    assert pad_sizes(480, 640) == (int(np.sqrt(240) * 3), int(np.sqrt(320) * 3)) == (46, 53)
    assert target_size(480 + 92, 640 + 106, (384, 512)) == (384, 512)
    assert target_size(375 + 2 * 41, 1242 + 2 * 74, (384, 768)) == (384, 1152)  # a KITTI frame, padded


@pytest.mark.parametrize("pad, flip", [(True, True), (False, False)])
def test_predict_matches_the_originals_steps_in_torch(tiny, pad, flip):
    name, config, model, _, params = tiny
    net_hw = (64, 96)  # small for speed; the config's own (384 x 512) runs the same code
    images = [photo(50, 75, 1), photo(41, 64, 2)]
    ours = beit_flax.predict(ZoeDepth(config), params, images, net_size=net_hw, pad=pad, flip=flip)
    errors = []
    for image, got in zip(images, ours):
        expected = torch_infer(model, image, net_hw, pad, flip)
        assert_nondegenerate(expected)  # a flat reference map would make the comparison prove little
        assert got.shape == image.shape[:2] and got.dtype == np.float32
        errors.append(float(np.abs(got - expected).max() / np.abs(expected).max()))
    print(f"{name} pad={pad} flip={flip}: max rel err {max(errors):.2e}")
    assert max(errors) <= PIPELINE_TOLERANCE


def test_predict_refuses_zoedepth_options_for_a_dpt():
    with pytest.raises(ValueError, match="has no test-time padding or flip"):
        beit_flax.predict(beit_flax.DPT(TINY), init_params(TINY), [photo(32, 32, 0)], flip=False)


# --- beit-depth ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tiny", ["n"], indirect=True)  # one variant is enough for the CLI
def test_beit_depth_predict_writes_meters_and_a_fixed_range_png(tiny, tmp_path, capsys):
    from beit_flax.cli import main

    _name, config, _, _, params = tiny
    path = tmp_path / "zoe.msgpack"
    weights.save(path, config.replace(net_size=(64, 96)), params)
    image = photo(50, 75, 3)
    Image.fromarray(image).save(tmp_path / "room.png")
    out = tmp_path / "out"
    assert main(["predict", str(tmp_path / "room.png"), "--weights", str(path), "--out", str(out), "-q"]) == 0
    summary = capsys.readouterr().out
    top = max(b.max_depth for b in config.bins)
    assert f"metric depth, colour range 0..{top:g} m" in summary
    depth = np.load(out / "room.npy")
    expected = beit_flax.predict(ZoeDepth(config), params, [image], net_size=(64, 96))[0]
    np.testing.assert_allclose(depth, expected, rtol=1e-5, atol=1e-6)
    png = Image.open(out / "room.png")
    assert png.size == (75, 50) and png.text["depth_range_m"] == f"0 {top:g}"
    assert (
        main(
            [
                "predict",
                str(tmp_path / "room.png"),
                "--weights",
                str(path),
                "--out",
                str(out),
                "-q",
                "--no-flip",
                "--no-pad",
            ]
        )
        == 0
    )
    capsys.readouterr()
    single = beit_flax.predict(ZoeDepth(config), params, [image], net_size=(64, 96), pad=False, flip=False)[0]
    np.testing.assert_allclose(np.load(out / "room.npy"), single, rtol=1e-5, atol=1e-6)


def test_beit_depth_refuses_zoedepth_flags_for_a_midas_file(tmp_path, capsys):
    from beit_flax.cli import main

    weights.save(tmp_path / "dpt.msgpack", TINY, init_params(TINY))
    Image.fromarray(photo(32, 32, 0)).save(tmp_path / "a.png")
    code = main(
        [
            "predict",
            str(tmp_path / "a.png"),
            "--weights",
            str(tmp_path / "dpt.msgpack"),
            "--out",
            str(tmp_path / "out"),
            "--no-flip",
            "-q",
        ]
    )
    assert code == 2 and "has no test-time padding or flip" in capsys.readouterr().err


@pytest.mark.parametrize("tiny", ["nk"], indirect=True)  # one variant is enough for the CLI
@pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")  # imageio-ffmpeg: fork + exec at once
def test_beit_depth_video_uses_the_fixed_metric_range(tiny, tmp_path, capsys):
    from beit_flax.cli import main

    imageio = pytest.importorskip("imageio.v2")
    pytest.importorskip("imageio_ffmpeg")
    _name, config, _, _, params = tiny
    path = tmp_path / "zoe.msgpack"
    weights.save(path, config.replace(net_size=(64, 96)), params)
    frames = [photo(48, 64, seed) for seed in range(3)]
    imageio.mimwrite(tmp_path / "in.mp4", frames, format="FFMPEG", fps=10, macro_block_size=1, ffmpeg_log_level="error")
    out = tmp_path / "out.mp4"
    maps = tmp_path / "maps"
    argv = ["video", str(tmp_path / "in.mp4"), "--weights", str(path), "--out", str(out), "-q"]
    assert main([*argv, "--npy", str(maps)]) == 0
    assert len(imageio.mimread(out, format="FFMPEG")) == 3
    assert "metric depth, colour range 0..80 m (near bright)" in capsys.readouterr().out
    # --npy: meters, as predict gives them (no alignment for metric depth); the video's frame is a lossy copy
    from beit_flax.predictor import Predictor

    decoded = imageio.mimread(tmp_path / "in.mp4", format="FFMPEG")
    first = Predictor(path).depth(np.asarray(decoded[0]))
    np.testing.assert_allclose(np.load(maps / "frame_000000.npy"), first, rtol=0, atol=1e-5 * np.abs(first).max())
    assert main([*argv, "--no-stabilize"]) == 2  # nothing to switch off for metric depth
    assert "--no-stabilize is for relative depth" in capsys.readouterr().err
