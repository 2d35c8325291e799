"""Key tables: PyTorch checkpoint names <-> beit-flax parameter paths, one table per checkpoint layout, both ways.

A rule is (torch name, flax path, kind). `{i}` stands for a block index and is the same on both sides; per-stage
rules are spelled out with comprehensions because the layouts number stages differently (MiDaS 1..4 like us,
transformers 0..3, and transformers' fusion stage runs coarsest first). The kind (`convert.rules.KINDS`) says
which tensors a module has and how each is laid out.

`to_flax` and `to_torch` only read these tables, so a torch -> flax -> torch round trip gives back every
mapped tensor bit for bit. Tensors that the model never uses are listed per layout in DROPPED; anything neither mapped
nor dropped is an error.
"""

from __future__ import annotations

from beit_flax.convert.rules import KINDS, Rule

STAGES = (1, 2, 3, 4)


def _block_rules(prefix: str, names: dict[str, str]) -> list[Rule]:
    """Encoder rules for one layout; `names` maps our module names to that layout's names under `prefix`."""
    block = "encoder/block_{i}"
    rules = [
        Rule(f"{prefix}.{names['gamma_1']}", f"{block}/gamma_1", "param"),
        Rule(f"{prefix}.{names['gamma_2']}", f"{block}/gamma_2", "param"),
        Rule(f"{prefix}.{names['norm1']}", f"{block}/norm1", "norm"),
        Rule(f"{prefix}.{names['norm2']}", f"{block}/norm2", "norm"),
        Rule(f"{prefix}.{names['table']}", f"{block}/attn/relative_position/table", "param"),
        Rule(f"{prefix}.{names['proj']}", f"{block}/attn/proj", "dense"),
        Rule(f"{prefix}.{names['fc1']}", f"{block}/mlp/fc1", "dense"),
        Rule(f"{prefix}.{names['fc2']}", f"{block}/mlp/fc2", "dense"),
    ]
    if "qkv" in names:  # MiDaS / timm: fused weight, separate q and v biases, no k bias
        rules += [
            Rule(f"{prefix}.{names['qkv']}", f"{block}/attn", "qkv"),
            Rule(f"{prefix}.{names['q_bias']}", f"{block}/attn/query/bias", "param"),
            Rule(f"{prefix}.{names['v_bias']}", f"{block}/attn/value/bias", "param"),
        ]
    else:  # transformers: three Linear layers, the key one without bias
        rules += [Rule(f"{prefix}.{names[n]}", f"{block}/attn/{n}", "dense") for n in ("query", "key", "value")]
    return rules


MIDAS: list[Rule] = [
    Rule("pretrained.model.cls_token", "patch_embed/cls_token", "param"),
    Rule("pretrained.model.patch_embed.proj", "patch_embed/proj", "conv"),
    *_block_rules(
        "pretrained.model.blocks.{i}",
        {
            "gamma_1": "gamma_1",
            "gamma_2": "gamma_2",
            "norm1": "norm1",
            "norm2": "norm2",
            "table": "attn.relative_position_bias_table",
            "proj": "attn.proj",
            "fc1": "mlp.fc1",
            "fc2": "mlp.fc2",
            "qkv": "attn.qkv.weight",
            "q_bias": "attn.q_bias",
            "v_bias": "attn.v_bias",
        },
    ),
    *[Rule(f"pretrained.act_postprocess{s}.0.project.0", f"reassemble_{s}/readout", "dense") for s in STAGES],
    *[Rule(f"pretrained.act_postprocess{s}.3", f"reassemble_{s}/project", "conv") for s in STAGES],
    *[Rule(f"pretrained.act_postprocess{s}.4", f"reassemble_{s}/resample", "conv") for s in (1, 2, 4)],
    *[Rule(f"scratch.layer{s}_rn", f"reassemble_{s}/to_fusion", "conv") for s in STAGES],
    *[
        Rule(f"scratch.refinenet{s}.resConfUnit{u}.conv{c}", f"fusion_{s}/rcu{u}/conv{c}", "conv")
        for s in STAGES
        for u in (1, 2)
        for c in (1, 2)
        if (s, u) != (4, 1)
    ],
    *[Rule(f"scratch.refinenet{s}.out_conv", f"fusion_{s}/out_conv", "conv") for s in STAGES],
    *[Rule(f"scratch.output_conv.{n}", f"head/conv{c}", "conv") for c, n in ((1, 0), (2, 2), (3, 4))],
]


def _transformers_rules(embeddings: str, blocks: str, names: dict[str, str]) -> list[Rule]:
    """Rules shared by the transformers v4 (hub) and v5 layouts, which differ only in the backbone names."""
    return [
        Rule(f"{embeddings}.cls_token", "patch_embed/cls_token", "param"),
        Rule(f"{embeddings}.patch_embeddings.projection", "patch_embed/proj", "conv"),
        *_block_rules(blocks, names),
        *[
            Rule(f"neck.reassemble_stage.readout_projects.{s - 1}.0", f"reassemble_{s}/readout", "dense")
            for s in STAGES
        ],
        *[Rule(f"neck.reassemble_stage.layers.{s - 1}.projection", f"reassemble_{s}/project", "conv") for s in STAGES],
        *[Rule(f"neck.reassemble_stage.layers.{s - 1}.resize", f"reassemble_{s}/resample", "conv") for s in (1, 2, 4)],
        *[Rule(f"neck.convs.{s - 1}", f"reassemble_{s}/to_fusion", "conv") for s in STAGES],
        # transformers' fusion stage starts at the coarsest map: its layer 0 is our (and MiDaS's) stage 4.
        *[
            Rule(
                f"neck.fusion_stage.layers.{4 - s}.residual_layer{u}.convolution{c}",
                f"fusion_{s}/rcu{u}/conv{c}",
                "conv",
            )
            for s in STAGES
            for u in (1, 2)
            for c in (1, 2)
            if (s, u) != (4, 1)
        ],
        *[Rule(f"neck.fusion_stage.layers.{4 - s}.projection", f"fusion_{s}/out_conv", "conv") for s in STAGES],
        *[Rule(f"head.head.{n}", f"head/conv{c}", "conv") for c, n in ((1, 0), (2, 2), (3, 4))],
    ]


HF_V4: list[Rule] = _transformers_rules(
    "backbone.embeddings",
    "backbone.encoder.layer.{i}",
    {
        "gamma_1": "lambda_1",
        "gamma_2": "lambda_2",
        "norm1": "layernorm_before",
        "norm2": "layernorm_after",
        "table": "attention.attention.relative_position_bias.relative_position_bias_table",
        "proj": "attention.output.dense",
        "fc1": "intermediate.dense",
        "fc2": "output.dense",
        "query": "attention.attention.query",
        "key": "attention.attention.key",
        "value": "attention.attention.value",
    },
)

HF_V5: list[Rule] = _transformers_rules(
    "backbone.beit.embeddings",
    "backbone.beit.layers.{i}",
    {
        "gamma_1": "lambda_1",
        "gamma_2": "lambda_2",
        "norm1": "layernorm_before",
        "norm2": "layernorm_after",
        "table": "relative_position_bias.relative_position_bias_table",
        "proj": "attention.o_proj",
        "fc1": "mlp.fc1",
        "fc2": "mlp.fc2",
        "query": "attention.q_proj",
        "key": "attention.k_proj",
        "value": "attention.v_proj",
    },
)

# Tensors the released files carry that the depth model never uses (regexes over the whole name).
_ANY_LAYOUT_DROPPED = [r".*\.relative_position_index"]  # a buffer, regenerated for every input grid
DROPPED: dict[str, list[str]] = {
    "midas": [
        *_ANY_LAYOUT_DROPPED,
        r"pretrained\.model\.fc_norm\.(weight|bias)",  # classifier pooling norm
        r"pretrained\.model\.head\.(weight|bias)",  # ImageNet classifier
        r"scratch\.refinenet4\.resConfUnit1\..*",  # refinenet4 has no skip input
    ],
    "hf-v4": [*_ANY_LAYOUT_DROPPED, r"neck\.fusion_stage\.layers\.0\.residual_layer1\..*"],
    "hf-v5": [*_ANY_LAYOUT_DROPPED, r"neck\.fusion_stage\.layers\.0\.residual_layer1\..*"],
}

LAYOUTS: dict[str, list[Rule]] = {"midas": MIDAS, "hf-v4": HF_V4, "hf-v5": HF_V5}


def find_rule(layout: str, flax_path: str) -> tuple[Rule, str]:
    """The rule of `layout` that fills `flax_path` (block paths spelled with `{i}`) and that tensor's torch name."""
    for rule in LAYOUTS[layout]:
        for torch_leaf in KINDS[rule.kind]:
            torch_name, flax_paths = rule.names(torch_leaf, "{i}")
            if flax_path in flax_paths:
                return rule, torch_name
    raise KeyError(f"no {layout} rule fills {flax_path}")
