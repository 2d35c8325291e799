"""Key tables: Depth Anything checkpoint names <-> beit-flax parameter paths, one per layout, both ways.

release  the original `.pth` files of V2 (`depth_anything_v2[_metric_*]_vit*.pth`) and V1
         (`depth_anything_vit*14.pth`): `pretrained.*` (DINOv2, timm-style names, fused qkv) and `depth_head.*`
hf-v4    transformers' `DepthAnythingForDepthEstimation` as the hub folders hold it (`*-hf`, saved by transformers
         4): `backbone.*` (Dinov2: query / key / value, `attention.output.dense`), `neck.*`, `head.*`
hf-v5    the same model as transformers 5 names it (`attention.q_proj` ... `o_proj`, SwiGLU's gate / up / down)

transformers' fusion stage runs coarsest first: its layer 0 is refinenet4 (our fusion_4).
"""

from __future__ import annotations

from beit_flax.convert.rules import KINDS, Rule

STAGES = (1, 2, 3, 4)
_BLOCK = "encoder/block_{i}"


def _head_rules(reassemble: dict[str, str], fusion: str, head: dict[str, str], layer_rn: str) -> list[Rule]:
    """The DPT head's rules; `reassemble` / `fusion` / `layer_rn` name a stage s (1..4) with {s} (release) or
    {t} (transformers' 0-based index, fusion coarsest first: {t} = 4 - s)."""
    name = lambda pattern, s: pattern.format(s=s, k=s - 1, t=4 - s)
    return [
        *[Rule(name(reassemble["readout"], s), f"reassemble_{s}/readout", "dense") for s in STAGES],
        *[Rule(name(reassemble["project"], s), f"reassemble_{s}/project", "conv") for s in STAGES],
        *[Rule(name(reassemble["resample"], s), f"reassemble_{s}/resample", "conv") for s in (1, 2, 4)],
        *[Rule(name(layer_rn, s), f"reassemble_{s}/to_fusion", "conv") for s in STAGES],
        *[
            Rule(name(fusion, s) + f".{head['rcu'].format(u=u, c=c)}", f"fusion_{s}/rcu{u}/conv{c}", "conv")
            for s in STAGES
            for u in (1, 2)
            for c in (1, 2)
            if (s, u) != (4, 1)
        ],
        *[Rule(name(fusion, s) + f".{head['out_conv']}", f"fusion_{s}/out_conv", "conv") for s in STAGES],
        *[Rule(head[f"conv{c}"], f"head/conv{c}", "conv") for c in (1, 2, 3)],
    ]


RELEASE: list[Rule] = [
    Rule("pretrained.cls_token", "patch_embed/cls_token", "param"),
    Rule("pretrained.pos_embed", "patch_embed/pos_embed", "param"),
    Rule("pretrained.patch_embed.proj", "patch_embed/proj", "conv"),
    Rule("pretrained.blocks.{i}.norm1", f"{_BLOCK}/norm1", "norm"),
    Rule("pretrained.blocks.{i}.norm2", f"{_BLOCK}/norm2", "norm"),
    Rule("pretrained.blocks.{i}.attn.qkv", f"{_BLOCK}/attn", "qkv_dense"),
    Rule("pretrained.blocks.{i}.attn.proj", f"{_BLOCK}/attn/proj", "dense"),
    Rule("pretrained.blocks.{i}.ls1.gamma", f"{_BLOCK}/ls1", "param"),
    Rule("pretrained.blocks.{i}.ls2.gamma", f"{_BLOCK}/ls2", "param"),
    Rule("pretrained.blocks.{i}.mlp.fc1", f"{_BLOCK}/mlp/fc1", "dense"),
    Rule("pretrained.blocks.{i}.mlp.fc2", f"{_BLOCK}/mlp/fc2", "dense"),
    Rule("pretrained.blocks.{i}.mlp.w12", f"{_BLOCK}/mlp", "gate_up"),
    Rule("pretrained.blocks.{i}.mlp.w3", f"{_BLOCK}/mlp/down", "dense"),
    Rule("pretrained.norm", "encoder/norm", "norm"),
    *_head_rules(
        {
            "readout": "depth_head.readout_projects.{k}.0",
            "project": "depth_head.projects.{k}",
            "resample": "depth_head.resize_layers.{k}",
        },
        "depth_head.scratch.refinenet{s}",
        {
            "rcu": "resConfUnit{u}.conv{c}",
            "out_conv": "out_conv",
            "conv1": "depth_head.scratch.output_conv1",
            "conv2": "depth_head.scratch.output_conv2.0",
            "conv3": "depth_head.scratch.output_conv2.2",
        },
        "depth_head.scratch.layer{s}_rn",
    ),
]


def _transformers(names: dict[str, str]) -> list[Rule]:
    layer = "backbone.encoder.layer.{i}"
    return [
        Rule("backbone.embeddings.cls_token", "patch_embed/cls_token", "param"),
        Rule("backbone.embeddings.position_embeddings", "patch_embed/pos_embed", "param"),
        Rule("backbone.embeddings.patch_embeddings.projection", "patch_embed/proj", "conv"),
        Rule(f"{layer}.norm1", f"{_BLOCK}/norm1", "norm"),
        Rule(f"{layer}.norm2", f"{_BLOCK}/norm2", "norm"),
        *[Rule(f"{layer}.{names[n]}", f"{_BLOCK}/attn/{n}", "dense") for n in ("query", "key", "value", "proj")],
        Rule(f"{layer}.layer_scale1.lambda1", f"{_BLOCK}/ls1", "param"),
        Rule(f"{layer}.layer_scale2.lambda1", f"{_BLOCK}/ls2", "param"),
        Rule(f"{layer}.mlp.fc1", f"{_BLOCK}/mlp/fc1", "dense"),
        Rule(f"{layer}.mlp.fc2", f"{_BLOCK}/mlp/fc2", "dense"),
        *[Rule(f"{layer}.mlp.{torch}", f"{_BLOCK}/mlp{ours}", kind) for torch, ours, kind in names["swiglu"]],
        Rule("backbone.layernorm", "encoder/norm", "norm"),
        *_head_rules(
            {
                "readout": "neck.reassemble_stage.readout_projects.{k}.0",
                "project": "neck.reassemble_stage.layers.{k}.projection",
                "resample": "neck.reassemble_stage.layers.{k}.resize",
            },
            "neck.fusion_stage.layers.{t}",
            {
                "rcu": "residual_layer{u}.convolution{c}",
                "out_conv": "projection",
                "conv1": "head.conv1",
                "conv2": "head.conv2",
                "conv3": "head.conv3",
            },
            "neck.convs.{k}",
        ),
    ]


HF_V4 = _transformers(
    {
        "query": "attention.attention.query",
        "key": "attention.attention.key",
        "value": "attention.attention.value",
        "proj": "attention.output.dense",
        "swiglu": [("weights_in", "", "gate_up"), ("weights_out", "/down", "dense")],
    }
)
HF_V5 = _transformers(
    {
        "query": "attention.q_proj",
        "key": "attention.k_proj",
        "value": "attention.v_proj",
        "proj": "attention.o_proj",
        "swiglu": [("gate_proj", "/gate", "dense"), ("up_proj", "/up", "dense"), ("down_proj", "/down", "dense")],
    }
)

LAYOUTS: dict[str, list[Rule]] = {"release": RELEASE, "hf-v4": HF_V4, "hf-v5": HF_V5}

# Tensors the files carry that the depth model never uses (regexes over the whole name)
DROPPED: dict[str, list[str]] = {
    "release": [r"pretrained\.mask_token", r"depth_head\.scratch\.refinenet4\.resConfUnit1\..*"],
    "hf-v4": [r"backbone\.embeddings\.mask_token", r"neck\.fusion_stage\.layers\.0\.residual_layer1\..*"],
    "hf-v5": [r"backbone\.embeddings\.mask_token", r"neck\.fusion_stage\.layers\.0\.residual_layer1\..*"],
}

# Names that tell the layouts apart: the position table only DINOv2 has (transformers' BEiT has the same
# attention names), then transformers' attention naming
MARKERS = {
    "release": ("pretrained.pos_embed",),
    "hf-v4": ("backbone.embeddings.position_embeddings", "backbone.encoder.layer.0.attention.attention.query.weight"),
    "hf-v5": ("backbone.embeddings.position_embeddings", "backbone.encoder.layer.0.attention.q_proj.weight"),
}


def torch_name(layout: str, flax_path: str) -> str:
    """The torch name of the tensor that fills `flax_path` (block paths with `{i}`) in `layout`."""
    for rule in LAYOUTS[layout]:
        for torch_leaf in KINDS[rule.kind]:
            name, paths = rule.names(torch_leaf, "{i}")
            if flax_path in paths:
                return name
    raise KeyError(f"no {layout} rule fills {flax_path}")
