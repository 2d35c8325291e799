"""The tiny DPT-BEiT configuration of the fast tests, the one place it is stated (`torch_reference.TINY` is its spec).

16 x its 4 x 4 training grid gives the net size 64, which the converter infers from the checkpoint too.
"""

from beit_flax import DPTConfig

TINY = DPTConfig(
    width=32,
    depth=4,
    num_heads=2,
    train_grid=(4, 4),
    hooks=(0, 1, 2, 3),
    reassemble_channels=(8, 16, 32, 32),
    fusion_channels=16,
    head_channels=8,
    net_size=64,
)
