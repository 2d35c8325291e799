"""The tiny DPT-BEiT configuration of the fast tests: the architecture of `torch_reference.TINY`, as a DPTConfig."""

from beit_flax import DPTConfig

TINY = DPTConfig(width=32, depth=4, num_heads=2, train_grid=(4, 4), hooks=(0, 1, 2, 3),
                 reassemble_channels=(8, 16, 32, 32), fusion_channels=16, head_channels=8, net_size=64)
