"""Models: DynaMask and the Mask R-CNN baseline on torchvision's detection stack."""

from .detector import (DynaMaskRCNN, dynamask_resnet18_fpn, dynamask_resnet50_fpn, maskrcnn_resnet18_fpn,
                       maskrcnn_resnet50_fpn)
from .dynamask_head import DynaMaskHead
from .maskrcnn_head import MaskRCNNBranch
from .policy import POLICIES, RESOLUTIONS

__all__ = [
    "DynaMaskRCNN", "DynaMaskHead", "MaskRCNNBranch", "POLICIES", "RESOLUTIONS",
    "dynamask_resnet18_fpn", "dynamask_resnet50_fpn", "maskrcnn_resnet18_fpn", "maskrcnn_resnet50_fpn",
]
