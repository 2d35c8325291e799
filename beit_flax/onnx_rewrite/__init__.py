"""The ONNX graph jax2onnx writes, rewritten into the standard ops that runtimes fuse (`optimize`).

jax2onnx lowers the jitted program primitive by primitive, so the graph says what XLA runs, not what an ONNX
runtime runs fast. On BEiT-B 384 at 384 x 384 in onnxruntime 1.32 (CPU) that graph took twice as long as
`torch.onnx.export`'s of the same network (profile: README "Speed"): dense layers as `Einsum`, the decoder's
bilinear resizes as gathers between transposes of the largest feature maps, LayerNorm, GELU and softmax decomposed,
every block's relative-position bias rebuilt on every run. The rules (`fusions`, `layout`) rewrite those into
`MatMul`, `Resize`, `LayerNormalization`, `Softmax`, the GELU form runtimes fuse and channels-first decoder
convolutions, each after checking the constants it relies on (a pattern that does not match exactly stays as it is:
correct, only slower). onnxscript's optimizer (constant folding, no-op removal, common subexpressions) runs between
the rule sets.

Constants are folded only where that does not grow the file: a weight's transpose is, the relative-position biases
are not. Those depend on constants only once `fusions.ZeroTie` has removed the model's tie to the block's input,
so onnxruntime and OpenVINO compute them once, when they load the model (BEiT-L 512 would store 24 x 64 MB).
"""

from __future__ import annotations

import onnx_ir as ir
from onnxscript import optimizer
from onnxscript.rewriter import RewriteRuleSet

from beit_flax.onnx_rewrite.fusions import AFTER_FUSIONS, BIASES, FUSIONS
from beit_flax.onnx_rewrite.layout import MERGES, RESHAPES, RESIZES, SINKS

FOLD_LIMIT = 1 << 16
"""Elements: a folded constant may be larger only if it replaces as much of its inputs (a weight's transpose)."""
MAX_PASSES = 8
"""Of one rule set, until nothing matches (a rewrite can make another match possible)."""

RULE_SETS = tuple(
    RewriteRuleSet(rules, commute=True)  # each pattern as written and with the operands of Add / Mul swapped
    for rules in (FUSIONS + RESIZES, AFTER_FUSIONS + MERGES, BIASES, SINKS, RESHAPES)
)
"""In this order: a later set's pattern could take part of an earlier one's (max(x, 0) is LayerNorm's too)."""


def optimize(model: ir.Model) -> None:
    """Rewrite `model` in place (see the module's docstring). Outputs stay within float32 rounding (BEiT-B 384:
    2.7e-6 of max |depth| in onnxruntime)."""
    clean = lambda: optimizer.optimize_ir(model, input_size_limit=1 << 62, output_size_limit=FOLD_LIMIT)
    clean()
    for rules in RULE_SETS:
        for _ in range(MAX_PASSES):
            if not rules.apply_to_model(model):
                break
            clean()
