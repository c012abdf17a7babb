"""dynamask: instance segmentation with dynamic mask resolution (DynaMask, CVPR 2023) on torchvision."""

__version__ = "0.1.0"
