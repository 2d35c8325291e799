"""ZoeDepth converter (convert/zoedepth_*.py): every layout gives the same parameters, every tensor is accounted
for, the export gives back the original tensors, and the names and shapes are those of the released files.

Layouts: transformers' hub save (v4 names, config.json), transformers 5's own names (v5), and the release `.pt`
(`{"model": state_dict}` with the MiDaS core under `core.core.`, or bare with DataParallel's `module.`), which is
derived here from the transformers model by renaming (`to_release`, written from the original code's module names
and checked against the release key lists in tests/reference).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch_reference as ref
from flax import traverse_util
from safetensors.torch import save_file
from tiny_config import TINY

from beit_flax.convert import ConversionError, open_checkpoint
from beit_flax.demo import zoedepth_torch as zt
from beit_flax.demo.torch_model import as_spec, random_images
from beit_flax.models.zoedepth import PRESETS, ZoeDepthConfig, param_shapes
from beit_flax.models.zoedepth.convert.hf_config import zoedepth_hf_config_dict
from beit_flax.models.zoedepth.convert.to_flax import (
    infer_zoedepth_config,
    is_zoedepth,
    model_name,
)
from beit_flax.models.zoedepth.convert.to_flax import (
    to_flax as zoedepth_torch_to_flax,
)
from beit_flax.models.zoedepth.convert.to_torch import to_torch as zoedepth_flax_to_torch

torch.set_num_threads(min(2, os.cpu_count() or 1))

REF_DIR = Path(__file__).resolve().parent / "reference"
RELEASE_FILES = {"zoedepth_n": "ZoeD_M12_N", "zoedepth_k": "ZoeD_M12_K", "zoedepth_nk": "ZoeD_M12_NK"}
TINY_CONFIGS = zt.tiny_configs(TINY)


def read_tsv(path: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """key -> (shape, dtype) of a *-keys.tsv; the release lists' "model/" (the `{"model": ...}` wrapper) dropped."""
    out = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith(("#", "key\t")):
            key, shape, dtype = line.split("\t")
            out[key.removeprefix("model/")] = (tuple(int(s) for s in shape.split("x")), dtype)
    return out


def describe(state: dict) -> dict[str, tuple[tuple[int, ...], str]]:
    return {k: (tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in state.items()}


# ---------------------------------------------------------------------------------------------------------------------
# transformers -> release names, from the original modules (zoedepth_v1.py, zoedepth_nk_v1.py, layers/*.py)
# ---------------------------------------------------------------------------------------------------------------------

_MLPS = r"(seed_projector|projectors\.\d|seed_bin_regressors?(?:\.\w+)?|attractors(?:\.[a-z]+)?\.\d)"  # nn.Sequential
_HEAD_RENAMES = [  # (regex over the name after "metric_head.", replacement)
    (_MLPS + r"\.conv1\.", r"\1._net.0."),
    (_MLPS + r"\.conv2\.", r"\1._net.2."),
    (r"mlp_classifier\.linear1\.", "mlp_classifier.0."),
    (r"mlp_classifier\.linear2\.", "mlp_classifier.2."),
    (r"patch_transformer\.transformer_encoder\.(\d+)\.", r"patch_transformer.transformer_encoder.layers.\1."),
]
_QKV = r"metric_head\.patch_transformer\.transformer_encoder\.(\d+)\.self_attn\.(query|key|value)\.(weight|bias)"


def to_release(sd_v5: dict[str, torch.Tensor], config: ZoeDepthConfig) -> dict[str, torch.Tensor]:
    """A transformers-5 ZoeDepth state dict in the release layout, with the buffers the release files carry."""
    head_names = {"0": "1", "2": "2", "4": "3"}
    core = {k: v for k, v in sd_v5.items() if k.startswith(("backbone.", "neck."))}
    core |= {
        f"head.head.{n}.{leaf}": sd_v5[f"relative_head.conv{c}.{leaf}"]
        for n, c in head_names.items()
        for leaf in ("weight", "bias")
    }
    out = {f"core.core.{k}": v for k, v in ref.to_midas_layout(core, as_spec(config.core)).items()}
    fused: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, value in sd_v5.items():
        if not key.startswith("metric_head."):
            continue
        if found := re.fullmatch(_QKV, key):
            fused.setdefault((found[1], found[3]), {})[found[2]] = value
            continue
        name = key.removeprefix("metric_head.")
        for pattern, replacement in _HEAD_RENAMES:
            name = re.sub(pattern, replacement, name)
        out[name] = value
    for (layer, leaf), parts in fused.items():
        out[f"patch_transformer.transformer_encoder.layers.{layer}.self_attn.in_proj_{leaf}"] = torch.cat(
            [parts["query"], parts["key"], parts["value"]]
        )
    for b in config.bins:
        prefix = "conditional_log_binomial" + (f".{b.name}" if config.router is not None else "")
        out[f"{prefix}.log_binomial_transform.k_idx"] = torch.arange(b.n_bins).view(1, -1, 1, 1)
        out[f"{prefix}.log_binomial_transform.K_minus_1"] = torch.tensor([b.n_bins - 1.0]).view(1, -1, 1, 1)
    return out


def to_v4(sd_v5: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers 5 -> 4 (hub) names: the backbone as DPT's; the neck and heads keep theirs."""
    backbone = {k: v for k, v in sd_v5.items() if k.startswith("backbone.")}
    return ref.to_v4_names(backbone) | {k: v for k, v in sd_v5.items() if not k.startswith("backbone.")}


# ---------------------------------------------------------------------------------------------------------------------
# released key lists (no tensors: meta device and zero-stride arrays)
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_renaming_and_export_give_the_release_key_lists(name):
    """Names, shapes and dtypes of the original code's state_dict(): what its strict load_state_dict checks."""
    config = PRESETS[name]
    release = read_tsv(REF_DIR / f"{RELEASE_FILES[name]}.release-keys.tsv")
    hub = read_tsv(REF_DIR / f"{RELEASE_FILES[name]}.hf-v4-keys.tsv")
    with torch.device("meta"):
        model = zt.build_model(config)
    sd_v5 = dict(model.state_dict())
    assert describe(to_release(sd_v5, config)) == release  # the test's own renaming is the original's
    assert describe(to_v4(sd_v5)) == hub

    zeros = traverse_util.unflatten_dict(
        {tuple(p.split("/")): np.broadcast_to(np.float32(0), s) for p, s in param_shapes(config).items()}
    )
    for layout, expected in (("release", release), ("hf-v4", hub), ("hf-v5", describe(sd_v5))):
        assert describe(zoedepth_flax_to_torch(zeros, config, layout)) == expected, layout


@pytest.mark.parametrize("name", sorted(PRESETS))
@pytest.mark.parametrize("layout", ["release", "hf-v4"])
def test_released_shapes_identify_their_preset(name, layout):
    """A released file (no config.json) converts as its preset: the shapes tell N, K (normed: paired attractor
    outputs) and NK apart."""
    shapes = {k: s for k, (s, _) in read_tsv(REF_DIR / f"{RELEASE_FILES[name]}.{layout}-keys.tsv").items()}
    assert is_zoedepth(shapes)
    fake = SimpleNamespace(path=Path(f"{RELEASE_FILES[name]}.pt"), hf_config=None)
    assert infer_zoedepth_config(fake, layout, shapes) == PRESETS[name]


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_hub_config_json_is_read(name):
    """An `Intel/zoedepth-*` style config.json: transformers' BEiT eps 1e-12 (kept, as for DPT: transformers runs
    with it), alpha 1000 (ignored, as transformers ignores it), a single head without a name."""
    shapes = {k: s for k, (s, _) in read_tsv(REF_DIR / f"{RELEASE_FILES[name]}.hf-v4-keys.tsv").items()}
    hub = zt.hf_config(PRESETS[name]).to_dict()
    hub["backbone_config"]["layer_norm_eps"] = 1e-12
    hub["attractor_alpha"] = 1000
    if len(hub["bin_configurations"]) == 1:
        del hub["bin_configurations"][0]["name"]
    fake = SimpleNamespace(path=Path("hub/model.safetensors"), hf_config=json.loads(json.dumps(hub)))
    config = infer_zoedepth_config(fake, "hf-v4", shapes)
    assert config == PRESETS[name].replace(core=PRESETS[name].core.replace(layer_norm_eps=1e-12))
    assert model_name(config) == name


def test_dpt_checkpoints_are_not_zoedepth():
    shapes = {k: s for k, (s, _) in read_tsv(REF_DIR / "dpt_beit_large_384.midas-keys.tsv").items()}
    assert not is_zoedepth(shapes)
    assert not is_zoedepth({k: s for k, (s, _) in read_tsv(REF_DIR / "dpt_beit_large_512.hf-v4-keys.tsv").items()})


# ---------------------------------------------------------------------------------------------------------------------
# tiny models, every layout, both directions
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=sorted(TINY_CONFIGS))
def saved(request, tmp_path_factory):
    """(config, torch reference, v5 state dict, folder) with the tiny model saved in every layout."""
    config = TINY_CONFIGS[request.param]
    model = zt.build_reference(config, seed=3)
    sd_v5 = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    folder = tmp_path_factory.mktemp(f"zoedepth_ckpt_{request.param}")
    (folder / "hub").mkdir()
    model.save_pretrained(folder / "hub")  # config.json + model.safetensors, v4 names
    (folder / "hub" / "preprocessor_config.json").write_text(
        json.dumps({"size": {"height": config.net_size[0], "width": config.net_size[1]}})
    )
    (folder / "v5").mkdir()
    save_file(sd_v5, folder / "v5" / "model.safetensors")
    (folder / "v5" / "config.json").write_text(model.config.to_json_string())
    release = to_release(sd_v5, config)
    torch.save({"model": release}, folder / "release.pt")
    torch.save({f"module.{k}": v for k, v in release.items()}, folder / "release_dataparallel.pt")
    save_file(to_v4(sd_v5), folder / "bare_hub.safetensors")
    return config, model, sd_v5, folder


def _flat(params) -> dict[str, np.ndarray]:
    return traverse_util.flatten_dict(params, sep="/")


def test_every_layout_gives_identical_params(saved):
    config, _, _, folder = saved
    hub = zoedepth_torch_to_flax(open_checkpoint(folder / "hub"))
    assert hub.layout == "hf-v4" and hub.config == config  # config.json + preprocessor_config.json say it all
    expected = _flat(hub.params)
    assert {p: v.shape for p, v in expected.items()} == param_shapes(config)
    for source, layout, kwargs in [
        ("v5", "hf-v5", {}),
        ("release.pt", "release", {"config": config}),
        ("release_dataparallel.pt", "release", {"config": config}),
        ("bare_hub.safetensors", "hf-v4", {"config": config}),
    ]:
        got = zoedepth_torch_to_flax(open_checkpoint(folder / source), **kwargs)
        assert got.layout == layout, source
        flat = _flat(got.params)
        assert flat.keys() == expected.keys(), source
        for path, value in expected.items():
            np.testing.assert_array_equal(flat[path], value, err_msg=f"{source}: {path}")


def test_release_needs_its_config_unless_released(saved):
    config, _, _, folder = saved
    with pytest.raises(ConversionError, match="matches none of the released configs"):
        zoedepth_torch_to_flax(open_checkpoint(folder / "release.pt"))
    wrong = TINY_CONFIGS["k" if config.router is None and config.bin_centers_type == "softplus" else "n"]
    with pytest.raises(ConversionError, match="not the ZoeDepth of this config"):
        zoedepth_torch_to_flax(open_checkpoint(folder / "release.pt"), config=wrong)


def test_dropped_are_exactly_the_unused_tensors(saved):
    config, _, _, folder = saved
    release = zoedepth_torch_to_flax(open_checkpoint(folder / "release.pt"), config=config)
    depth = config.core.depth
    buffers = {
        f"conditional_log_binomial{'' if config.router is None else '.' + b.name}.log_binomial_transform.{n}"
        for b in config.bins
        for n in ("k_idx", "K_minus_1")
    }
    assert set(release.dropped) == {
        *(f"core.core.pretrained.model.blocks.{i}.attn.relative_position_index" for i in range(depth)),
        *(f"core.core.pretrained.model.{m}.{leaf}" for m in ("fc_norm", "head") for leaf in ("weight", "bias")),
        *(f"core.core.scratch.refinenet4.resConfUnit1.conv{c}.{leaf}" for c in (1, 2) for leaf in ("weight", "bias")),
        *buffers,
    }
    hub = zoedepth_torch_to_flax(open_checkpoint(folder / "hub"))
    assert set(hub.dropped) == {
        f"neck.fusion_stage.layers.0.residual_layer1.convolution{c}.{leaf}"
        for c in (1, 2)
        for leaf in ("weight", "bias")
    }


def test_export_gives_back_every_tensor(saved, tmp_path):
    config, model, sd_v5, folder = saved
    params = zoedepth_torch_to_flax(open_checkpoint(folder / "hub")).params
    images = random_images(1, 64, 96, seed=4)
    expected, _ = zt.reference_outputs(model, images)

    # release: the derived file's names, shapes and dtypes; every used tensor bit for bit
    release = to_release(sd_v5, config)
    exported = zoedepth_flax_to_torch(params, config, "release")
    assert describe(exported) == describe(release)
    unused = re.compile(r"core\.core\.(pretrained\.model\.(fc_norm|head)|scratch\.refinenet4\.resConfUnit1)\..*")
    for key, value in release.items():
        if not unused.fullmatch(key):  # the classifier and refinenet4's first unit are zeros / ones in ours
            np.testing.assert_array_equal(exported[key], value.numpy(), err_msg=key)
    torch.save({"model": {k: torch.from_numpy(v) for k, v in exported.items()}}, tmp_path / "again.pt")
    again = _flat(zoedepth_torch_to_flax(open_checkpoint(tmp_path / "again.pt"), config=config).params)
    for path, value in _flat(params).items():
        np.testing.assert_array_equal(again[path], value, err_msg=path)

    # transformers 5 names: a strict load into a fresh model, which then computes exactly the reference's output
    fresh = zt.build_model(config).eval()
    fresh.load_state_dict(
        {k: torch.from_numpy(v) for k, v in zoedepth_flax_to_torch(params, config, "hf-v5").items()}, strict=True
    )
    torch.testing.assert_close(zt.reference_outputs(fresh, images)[0], expected, rtol=0, atol=0)

    # transformers 4 (hub) names: a folder that from_pretrained reads
    hub = tmp_path / "hub"
    hub.mkdir()
    save_file(
        {k: torch.from_numpy(v) for k, v in zoedepth_flax_to_torch(params, config, "hf-v4").items()},
        hub / "model.safetensors",
    )
    (hub / "config.json").write_text(json.dumps(zoedepth_hf_config_dict(config)))
    loaded = zt.ZoeDepthForDepthEstimation.from_pretrained(hub, attn_implementation="eager").eval()
    torch.testing.assert_close(zt.reference_outputs(loaded, images)[0], expected, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------------------------------


def test_unknown_missing_and_non_finite_tensors_are_errors(saved, tmp_path):
    config, _, sd_v5, _ = saved
    release = to_release(sd_v5, config)
    cases = {
        "extra": ({**release, "seed_bin_regressor.extra.weight": torch.zeros(3)}, "unexpected seed_bin_regressor"),
        "missing": ({k: v for k, v in release.items() if k != "conv2.bias"}, "missing conv2/bias"),
        "nan": ({**release, "conv2.bias": torch.full_like(release["conv2.bias"], float("nan"))}, "non-finite"),
    }
    for name, (state, message) in cases.items():
        torch.save({"model": state}, tmp_path / f"{name}.pt")
        with pytest.raises(ConversionError, match=message):
            zoedepth_torch_to_flax(open_checkpoint(tmp_path / f"{name}.pt"), config=config)
    torch.save(ref.to_midas_layout(ref.state_dict_v5(ref.build_reference(ref.TINY)), ref.TINY), tmp_path / "dpt.pt")
    with pytest.raises(ConversionError, match="not a ZoeDepth checkpoint"):
        zoedepth_torch_to_flax(open_checkpoint(tmp_path / "dpt.pt"))
