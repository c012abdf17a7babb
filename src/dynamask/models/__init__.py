"""Models: DynaMask and the Mask R-CNN baseline on torchvision's detection stack."""

from ..moved import moved_names
from .detector import (
    DynaMaskRCNN,
    build_model,
    dynamask_resnet18_fpn,
    dynamask_resnet50_fpn,
    maskrcnn_resnet18_fpn,
    maskrcnn_resnet50_fpn,
)
from .dynamask_head import DynaMaskHead
from .geometry import MASK_GEOMETRIES, MaskRoIPool, roi_mask_targets
from .maskrcnn_head import MaskRCNNBranch
from .paste import paste_masks, paste_masks_grouped
from .policy import POLICIES, RESOLUTIONS

__all__ = [
    "DynaMaskRCNN",
    "DynaMaskHead",
    "MaskRCNNBranch",
    "MaskRoIPool",
    "MASK_GEOMETRIES",
    "POLICIES",
    "RESOLUTIONS",
    "paste_masks",
    "paste_masks_grouped",
    "roi_mask_targets",
    "dynamask_resnet18_fpn",
    "dynamask_resnet50_fpn",
    "maskrcnn_resnet18_fpn",
    "maskrcnn_resnet50_fpn",
    "build_model",
]

#: the round trip moved to dynamask.evaluation.round_trip (a measurement); the old names still work
__getattr__ = moved_names(__name__, "dynamask.evaluation.round_trip", ("round_trip_iou", "round_trip_masks"))
