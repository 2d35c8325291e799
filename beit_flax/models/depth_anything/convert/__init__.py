"""Depth Anything checkpoints <-> beit-flax parameters: the key tables (`keys.py`), the import (`to_flax.py`),
the export (`to_torch.py`) and transformers' config.json (`hf_config.py`)."""
