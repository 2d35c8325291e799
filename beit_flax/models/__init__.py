"""The models: `dpt` (MiDaS v3.1 BEiT-DPT, one file per stage of the DPT figure) and what they share."""
