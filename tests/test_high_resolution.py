"""BEiT-B 384 at high resolution, where attention runs in query chunks (`attention.query_chunk`): the converted
model against transformers' DPTForDepthEstimation with every parameter perturbed (tests/torch_reference.py), square
and non-square. Tolerance: max|ours - torch| / max|torch| <= 1e-4 (measured: ~1e-5 and below).

About 2 minutes on a quiet 2-core CPU (torch eager needs ~3.7 GB at 1024 x 1024, the Flax model ~1.5 GB).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch_reference as ref

from beit_flax import DPT
from beit_flax.convert import open_checkpoint, torch_to_flax
from beit_flax.models.dpt.attention import query_chunk

TOLERANCE = 1e-4


@pytest.mark.full_size
def test_base_384_at_high_resolution_matches_transformers(tmp_path):
    spec = ref.PRESETS["dpt_beit_base_384"]
    model_pt = ref.build_reference(spec, seed=3)  # seed 2 leaves ~89% of the 1024 x 1024 map at the ReLU
    torch.save(ref.to_midas_layout(ref.state_dict_v5(model_pt), spec), tmp_path / "dpt_beit_base_384.pt")
    converted = torch_to_flax(open_checkpoint(tmp_path / "dpt_beit_base_384.pt"))
    model = DPT(converted.config)
    apply = jax.jit(model.apply)
    for (height, width), seed in (((1024, 1024), 21), ((768, 1024), 22)):
        tokens = height * width // 16**2 + 1
        assert query_chunk("auto", tokens, converted.config.num_heads) is not None  # the chunked path runs
        images = ref.random_images(1, height, width, seed=seed)
        expected = ref.reference_depth(model_pt, images).numpy()
        ref.assert_nondegenerate(expected)
        ours = np.asarray(apply({"params": converted.params}, jnp.asarray(images.permute(0, 2, 3, 1).numpy())))
        error = float(np.abs(ours - expected).max() / np.abs(expected).max())
        print(f"base_384 @{height}x{width} ({tokens} tokens): max rel error {error:.2e}")
        assert ours.shape == expected.shape and error <= TOLERANCE
