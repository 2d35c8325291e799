"""BEiT-DPT checkpoints <-> beit-flax: the key tables (`keys`), `to_flax`, `to_torch`, transformers' config.json."""
