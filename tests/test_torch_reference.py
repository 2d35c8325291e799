"""Self-check of tests/torch_reference.py (tiny configs; the released presets only on the meta device)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import DPTForDepthEstimation
from transformers.models.beit.modeling_beit import BeitRelativePositionBias

try:  # tests/ as a package (rootdir on sys.path) or as a plain directory (pytest's default "prepend" import mode)
    from tests import torch_reference as tr
except ImportError:
    import torch_reference as tr

torch.set_num_threads(min(4, os.cpu_count() or 1))


# Key / shape / dtype lists of the released checkpoints (MiDaS v3.1 release files; the Intel/dpt-beit-* hub files in
# transformers 4 and 5 names), kept in the repo so the tests need nothing outside it.
REF_DIR = Path(__file__).resolve().parent / "reference"
RELEASED_LAYOUTS = {
    "dpt_beit_large_512": ("midas", "hf-v4", "hf-v5"),
    "dpt_beit_large_384": ("midas",),
    "dpt_beit_base_384": ("midas", "hf-v4", "hf-v5"),
}


def _read_tsv(path: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """key -> (shape, dtype) from a *-keys.tsv file (comment lines start with '#', then a header line)."""
    out: dict[str, tuple[tuple[int, ...], str]] = {}
    for line in path.read_text().splitlines():
        if not line or line.startswith("#") or line.startswith("key\t"):
            continue
        key, shape, dtype = line.split("\t")
        out[key] = (tuple(int(s) for s in shape.split("x")), dtype)
    return out


def _describe(sd: dict[str, torch.Tensor]) -> dict[str, tuple[tuple[int, ...], str]]:
    return {k: (tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in sd.items()}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def _built(spec: dict, seed: int):
    model = tr.build_reference(spec, seed=seed)
    sd = tr.state_dict_v5(model)
    return model, sd, tr.to_midas_layout(sd, spec)


TINY_NONSQUARE = dict(tr.TINY, train_grid=(3, 4))  # non-square *training* grid: exercises the (w, h) table reshape


@pytest.fixture(scope="module")
def tiny():
    return _built(tr.TINY, seed=0)


@pytest.fixture(scope="module")
def tiny_nonsquare():
    return _built(TINY_NONSQUARE, seed=5)


# ---------------------------------------------------------------------------------------------------------------------
# config / model
# ---------------------------------------------------------------------------------------------------------------------


def test_config_fields():
    cfg = tr.hf_config(tr.PRESETS["dpt_beit_base_384"])
    bb = cfg.backbone_config
    assert bb.model_type == "beit" and not cfg.is_hybrid
    assert bb.use_relative_position_bias and not bb.use_shared_relative_position_bias
    assert not bb.use_absolute_position_embeddings and not bb.use_mask_token
    assert bb.layer_scale_init_value > 0 and bb.layer_norm_eps == 1e-6 and bb.hidden_act == "gelu"
    assert bb.out_features == ["stage3", "stage6", "stage9", "stage12"] and not bb.reshape_hidden_states
    assert list(bb.image_size) == [384, 384] and bb.patch_size == 16
    assert list(cfg.neck_hidden_sizes) == [96, 192, 384, 768] and cfg.fusion_hidden_size == 256
    assert list(cfg.reassemble_factors) == [4, 2, 1, 0.5] and cfg.readout_type == "project"
    assert cfg.use_bias_in_fusion_residual and not cfg.use_batch_norm_in_fusion_residual


def test_tiny_model(tiny):
    model, sd, _ = tiny
    assert not model.training and model.config._attn_implementation == "eager"
    assert model.backbone.config._attn_implementation == "eager"
    assert all(v.dtype == torch.float32 for v in sd.values())
    # head_channels honoured (transformers alone would give 32)
    assert sd["head.head.2.weight"].shape == (8, 8, 3, 3) and sd["head.head.4.weight"].shape == (1, 8, 1, 1)
    plain = DPTForDepthEstimation(tr.hf_config(tr.TINY))
    assert plain.head.head[2].out_channels == 32, "transformers no longer hard-codes 32: revisit build_model"


def test_every_parameter_perturbed(tiny):
    _model, sd, _ = tiny
    fresh = tr.build_model(tr.TINY).state_dict()
    for key, value in sd.items():
        assert not torch.equal(value, fresh[key]), f"{key} still has its init value"
        if value.numel() > 1:
            assert float(value.std()) > 1e-3, f"{key} is (nearly) constant"
    lam = torch.stack([v for k, v in sd.items() if "lambda_" in k])
    assert float(lam.min()) >= 0.1 and float(lam.max()) <= 0.5
    again = tr.state_dict_v5(tr.build_reference(tr.TINY, seed=0))
    other = tr.state_dict_v5(tr.build_reference(tr.TINY, seed=1))
    assert all(torch.equal(again[k], sd[k]) for k in sd)
    assert not torch.equal(other["backbone.beit.embeddings.cls_token"], sd["backbone.beit.embeddings.cls_token"])


@pytest.mark.parametrize("size", [(64, 96), (80, 48), (48, 112)])
def test_nondegenerate(tiny, size):
    model, _, mid = tiny
    x = tr.random_images(2, *size, seed=3)
    tr.assert_nondegenerate(tr.midas_forward(mid, tr.TINY, x).numpy())
    tr.assert_nondegenerate(tr.reference_depth(model, x))
    with pytest.raises(AssertionError):
        tr.assert_nondegenerate(np.zeros(size))
    with pytest.raises(AssertionError):
        tr.assert_nondegenerate(np.where(np.arange(size[1]) == 0, 1.0, 0.0) * np.ones(size))


# ---------------------------------------------------------------------------------------------------------------------
# state-dict layouts
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(tr.PRESETS))
def test_layouts_match_release_key_tables(name):
    spec = tr.PRESETS[name]
    with torch.device("meta"):
        model = tr.build_model(spec)
    sd = tr.state_dict_v5(model)
    layouts = {"hf-v5": sd, "hf-v4": tr.to_v4_names(sd), "midas": tr.to_midas_layout(sd, spec)}
    for tag in RELEASED_LAYOUTS[name]:
        expected, got = _read_tsv(REF_DIR / f"{name}.{tag}-keys.tsv"), _describe(layouts[tag])
        assert sorted(set(expected) - set(got)) == [] and sorted(set(got) - set(expected)) == [], tag
        assert {k: v for k, v in got.items() if expected[k] != v} == {}, tag


def test_v4_and_midas_values(tiny):
    _model, sd, mid = tiny
    v4 = tr.to_v4_names(sd)
    assert len(v4) == len(sd)
    back = tr.to_v5_names(v4)
    assert back.keys() == sd.keys() and all(torch.equal(back[k], sd[k]) for k in sd)
    assert torch.equal(
        v4["backbone.encoder.layer.1.attention.attention.key.weight"],
        sd["backbone.beit.layers.1.attention.k_proj.weight"],
    )
    assert torch.equal(v4["backbone.encoder.layer.3.output.dense.bias"], sd["backbone.beit.layers.3.mlp.fc2.bias"])
    c = tr.TINY["width"]
    qkv = mid["pretrained.model.blocks.2.attn.qkv.weight"]
    for j, which in enumerate("qkv"):
        assert torch.equal(qkv[j * c : (j + 1) * c], sd[f"backbone.beit.layers.2.attention.{which}_proj.weight"])
    assert torch.equal(
        mid["scratch.refinenet4.resConfUnit1.conv2.bias"],
        sd["neck.fusion_stage.layers.0.residual_layer1.convolution2.bias"],
    )
    assert torch.equal(mid["scratch.refinenet1.out_conv.weight"], sd["neck.fusion_stage.layers.3.projection.weight"])
    assert torch.equal(mid["pretrained.act_postprocess4.4.weight"], sd["neck.reassemble_stage.layers.3.resize.weight"])
    index = mid["pretrained.model.blocks.0.attn.relative_position_index"]
    assert index.dtype == torch.int64 and index.shape == (17, 17)
    assert torch.equal(index, BeitRelativePositionBias.generate_relative_position_index((4, 4)))


# ---------------------------------------------------------------------------------------------------------------------
# MiDaS functional reference
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("grid", [(4, 4), (3, 5), (1, 1), (24, 24)])
def test_relative_position_index(grid):
    expected = BeitRelativePositionBias.generate_relative_position_index(grid)
    assert torch.equal(tr.relative_position_index(grid), expected)


@pytest.mark.parametrize("train_grid,grid", [((4, 4), (4, 4)), ((4, 4), (5, 3)), ((3, 4), (2, 6))])
def test_relative_position_bias_matches_transformers(train_grid, grid):
    spec = dict(tr.TINY, train_grid=train_grid)
    module = BeitRelativePositionBias(tr.hf_config(spec).backbone_config)
    with torch.no_grad():
        module.relative_position_bias_table.normal_(generator=torch.Generator().manual_seed(0))
        ref = module(grid)[0]
    ours = tr.relative_position_bias(module.relative_position_bias_table.detach(), train_grid, grid)
    assert ours.shape == (2, grid[0] * grid[1] + 1, grid[0] * grid[1] + 1)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "which,size,batch", [("tiny", (64, 96), 2), ("tiny", (32, 32), 1), ("tiny_nonsquare", (96, 64), 1)]
)
def test_midas_forward_matches_transformers_at_multiples_of_32(request, which, size, batch):
    model, _, mid = request.getfixturevalue(which)
    spec = tr.TINY if which == "tiny" else TINY_NONSQUARE
    x = tr.random_images(batch, *size, seed=1)
    ref = tr.reference_depth(model, x)
    out = tr.midas_forward_intermediates(mid, spec, x)
    assert out["depth"].shape == (batch, *size) == ref.shape
    tr.assert_nondegenerate(out["depth"])
    rel = _rel(out["depth"], ref)
    print(f"\nparity {spec['train_grid']} {size}: max|diff|/max|ref| = {rel:.2e}")
    assert rel <= 1e-5
    with torch.no_grad():
        hooks = model.backbone(pixel_values=x).feature_maps
    for ours, theirs in zip(out["hooks"], hooks, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_midas_differs_from_transformers_at_16_not_32(tiny):
    model, _, mid = tiny
    x = tr.random_images(2, 80, 48, seed=2)
    ref = tr.reference_depth(model, x)
    out = tr.midas_forward_intermediates(mid, tr.TINY, x)
    depth = out["depth"]
    assert depth.shape == (2, 80, 48)
    assert ref.shape == (2, 96, 64)  # transformers fusion: every stage doubles from ceil(h/2), so 6x4 patches' worth
    tr.assert_nondegenerate(depth)
    # the encoder is unaffected, only the fusion rule differs
    with torch.no_grad():
        hooks = model.backbone(pixel_values=x).feature_maps
    for ours, theirs in zip(out["hooks"], hooks, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    resized = F.interpolate(ref[:, None], size=(80, 48), mode="bilinear", align_corners=False)[:, 0]
    rel = _rel(resized, depth)
    mean_rel = float((resized - depth).abs().mean() / depth.abs().mean())
    print(
        f"\n16-not-32 80x48: transformers {tuple(ref.shape)}, MiDaS {tuple(depth.shape)}; "
        f"after resizing transformers to 80x48: max rel {rel:.3f}, mean rel {mean_rel:.3f}"
    )
    assert rel > 1e-2


@pytest.mark.parametrize("shape", [(6, 4), (5, 3)])
def test_fusion_step_vs_transformers_layer(tiny, shape):
    """Same result when path and skip already match (transformers never resizes then); the MiDaS rule takes the
    target size from the caller, transformers always doubles."""
    model, _, mid = tiny
    gen = torch.Generator().manual_seed(0)
    f = tr.TINY["fusion_channels"]
    path = torch.randn((2, f, *shape), generator=gen)
    skip = torch.randn((2, f, *shape), generator=gen)
    layer = model.neck.fusion_stage.layers[1]  # MiDaS refinenet3
    with torch.no_grad():
        theirs = layer(path, skip)
    p = tr.fusion_params(mid, 3)
    ours = tr.midas_fusion_step(path, skip, p.rcu1, p.rcu2, p.out_conv, size=None)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    sized = tr.midas_fusion_step(path, skip, p.rcu1, p.rcu2, p.out_conv, size=(2 * shape[0] - 1, 2 * shape[1]))
    assert sized.shape == (2, f, 2 * shape[0] - 1, 2 * shape[1])
    with torch.no_grad():
        head_only = model.neck.fusion_stage.layers[0](path)  # refinenet4: no skip, RCU1 unused
    p4 = tr.fusion_params(mid, 4)
    torch.testing.assert_close(
        tr.midas_fusion_step(path, None, None, p4.rcu2, p4.out_conv), head_only, rtol=1e-5, atol=1e-5
    )
