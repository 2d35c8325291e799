"""convert/hf_config.py: the transformers config.json as a plain dict, and what the converter may import.

`export_weights --format hf` must work with only the `[convert]` extra (torch, no transformers), so the converter
builds transformers' `DPTConfig` (transformers `models/dpt/configuration_dpt.py`) as JSON itself; the demo's
`hf_config` reads the same dict.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch_reference as ref
import transformers

from beit_flax import PRESETS, DPTConfig
from beit_flax.models.dpt.convert.hf_config import hf_config_dict


@pytest.mark.parametrize("name", ["tiny", *PRESETS])
def test_dict_is_the_config_transformers_builds(name):
    """Through JSON (what from_pretrained reads) the dict gives the demo's transformers config, field for field."""
    config = DPTConfig(**ref.TINY) if name == "tiny" else PRESETS[name]
    read = transformers.DPTConfig.from_dict(json.loads(json.dumps(hf_config_dict(config))))
    assert read.to_dict() == ref.hf_config(config).to_dict()
    backbone = read.backbone_config
    assert backbone.out_indices == [h + 1 for h in config.hooks]  # index 0 is the embedding output
    assert list(backbone.image_size) == [16 * g for g in config.train_grid]
    assert backbone.layer_norm_eps == config.layer_norm_eps and read.neck_hidden_sizes == list(
        config.reassemble_channels
    )


def test_imports_stay_light():
    """`import beit_flax` never imports torch; the converter never imports transformers or the demo (which does)."""
    code = (
        "import sys\n"
        "import beit_flax\n"
        "assert 'torch' not in sys.modules, 'beit_flax imported torch'\n"
        "import beit_flax.convert, beit_flax.convert.cli, beit_flax.models.dpt.convert.to_torch\n"
        "import beit_flax.models.dpt.convert.hf_config, beit_flax.models.registry\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] == 'transformers' or m.startswith('beit_flax.demo'))\n"
        "assert not bad, bad\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stderr
