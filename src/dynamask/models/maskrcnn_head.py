"""The standard Mask R-CNN mask branch (4×conv3×3 256 + deconv → 28×28 class-specific masks),
behind the same interface as the DynaMask branch so both models share one code path: the same
RoI heads, the same target geometry and the same batched paste. Comparisons are then about the
mask head alone."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor

from . import losses as L
from .flops import conv2d_flops, conv_transpose2d_flops, roi_align_flops
from .geometry import MaskRoIPool, check_geometry
from .roi_utils import exporting, split_groups


class MaskRCNNBranch(nn.Module):
    resolution = 28

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 256,
        layers=(256, 256, 256, 256),
        featmap_names=("0", "1", "2", "3"),
        sampling_ratio: int = 2,
        mask_geometry: str = "exact",
    ):
        super().__init__()
        self.in_channels = in_channels
        self.sampling_ratio = sampling_ratio
        self.roi_pool = MaskRoIPool(list(featmap_names), 14, sampling_ratio, mask_geometry)
        self.mask_head = MaskRCNNHeads(in_channels, list(layers), 1)
        self.mask_predictor = MaskRCNNPredictor(layers[-1], layers[-1], num_classes)
        self.policy = "fixed-28"
        self.mask_budget = 1.0

    @property
    def mask_geometry(self) -> str:
        return self.roi_pool.geometry

    @mask_geometry.setter
    def mask_geometry(self, geometry: str) -> None:
        self.roi_pool.geometry = check_geometry(geometry)

    def flops_table(self) -> dict:
        total = roi_align_flops(self.in_channels, (14, 14), self.sampling_ratio)
        for m in self.mask_head.modules():
            if isinstance(m, nn.Conv2d):
                total += conv2d_flops(m, (14, 14))
        total += conv_transpose2d_flops(self.mask_predictor.conv5_mask, (14, 14))
        total += conv2d_flops(self.mask_predictor.mask_fcn_logits, (28, 28))
        return {
            "resolutions": [28],
            "cumulative": [total],
            "cumulative_with_switch": [total],
            "shared": total,
            "increments": [total],
            "switch": 0,
        }

    def _logits(self, features, boxes, image_shapes, labels: Tensor) -> Tensor:
        x = self.mask_predictor(self.mask_head(self.roi_pool(features, boxes, image_shapes)))
        return x[torch.arange(x.shape[0], device=x.device), labels].unsqueeze(1)

    def forward_train(self, features, rois, image_shapes, gt_masks, gt_labels, matched_idxs) -> dict[str, Tensor]:
        labels = torch.cat([gl[idx] for gl, idx in zip(gt_labels, matched_idxs)])
        logits = self._logits(features, rois, image_shapes, labels)
        if labels.numel() == 0:
            return {"loss_mask": logits.sum() * 0.0}
        target = L.matched_mask_targets(gt_masks, rois, matched_idxs, self.resolution, self.mask_geometry, image_shapes)
        return {"loss_mask": L.mask_bce(logits, target)}

    def forward_infer(
        self, features, boxes_per_image, labels_per_image, image_shapes, scores_per_image=None
    ) -> list[dict]:
        counts = [b.shape[0] for b in boxes_per_image]
        labels = torch.cat(labels_per_image)
        probs = self._logits(features, boxes_per_image, image_shapes, labels).sigmoid()
        index = torch.arange(labels.shape[0], device=labels.device)
        cost = float(self.flops_table()["cumulative"][0])
        if exporting() and len(counts) == 1:  # one traced image: no split by Python counts
            return [
                {
                    "mask_groups": [(index, probs)],
                    "mask_resolution": torch.full_like(labels, self.resolution),
                    "mask_flops": torch.full_like(labels, cost, dtype=torch.float32),
                }
            ]
        return [
            {
                "mask_groups": [(idx, masks) for _, idx, masks in image_groups],
                "mask_resolution": torch.full((n,), self.resolution, dtype=torch.int64, device=labels.device),
                "mask_flops": torch.full((n,), cost, device=labels.device),
            }
            for image_groups, n in zip(split_groups([(1, index, probs)], counts), counts)
        ]
