"""torchvision's RoI heads with a pluggable mask branch.

The box branch (sampling, box head, post-processing) is torchvision's, unchanged. The mask
branch is any module with ``forward_train(...) -> losses`` and ``forward_infer(...) -> per-image
dicts``: the DynaMask head or the standard Mask R-CNN head. At inference each detection's mask
stays at its own resolution (``mask_groups``) until :class:`BatchedPasteTransform` pastes them.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.models.detection.roi_heads import RoIHeads, fastrcnn_loss
from torchvision.models.detection.transform import GeneralizedRCNNTransform, resize_boxes

from .paste import paste_masks_grouped


class MaskBranchRoIHeads(RoIHeads):
    def __init__(self, *args, mask_branch: nn.Module, mask_rois_per_image: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.mask_branch = mask_branch
        # Training cost of a multi-stage mask head grows with the positives it sees; on a CPU
        # a random subset of at most this many positives per image trains the mask branch.
        self.mask_rois_per_image = mask_rois_per_image

    @classmethod
    def from_box_heads(
        cls, heads: RoIHeads, mask_branch: nn.Module, mask_rois_per_image: int | None = None
    ) -> MaskBranchRoIHeads:
        """Reuse the box parts and settings of an already built torchvision RoIHeads."""
        return cls(
            heads.box_roi_pool,
            heads.box_head,
            heads.box_predictor,
            heads.proposal_matcher.high_threshold,
            heads.proposal_matcher.low_threshold,
            heads.fg_bg_sampler.batch_size_per_image,
            heads.fg_bg_sampler.positive_fraction,
            heads.box_coder.weights,
            heads.score_thresh,
            heads.nms_thresh,
            heads.detections_per_img,
            mask_branch=mask_branch,
            mask_rois_per_image=mask_rois_per_image,
        )

    def has_mask(self) -> bool:
        return True

    def forward(
        self,
        features: dict[str, Tensor],
        proposals: list[Tensor],
        image_shapes: list[tuple[int, int]],
        targets: list[dict[str, Tensor]] | None = None,
    ):
        if self.training:
            if targets is None:
                raise ValueError("targets are required in training mode")
            proposals, matched_idxs, labels, regression_targets = self.select_training_samples(proposals, targets)

        box_features = self.box_head(self.box_roi_pool(features, proposals, image_shapes))
        class_logits, box_regression = self.box_predictor(box_features)

        if self.training:
            loss_classifier, loss_box_reg = fastrcnn_loss(class_logits, box_regression, labels, regression_targets)
            losses = {"loss_classifier": loss_classifier, "loss_box_reg": loss_box_reg}
            # Only positive proposals train the mask branch.
            positive = [self._sample_positives(torch.where(lab > 0)[0]) for lab in labels]
            mask_rois = [p[pos] for p, pos in zip(proposals, positive)]
            pos_matched = [m[pos] for m, pos in zip(matched_idxs, positive)]
            losses.update(
                self.mask_branch.forward_train(
                    features,
                    mask_rois,
                    image_shapes,
                    [t["masks"] for t in targets],
                    [t["labels"] for t in targets],
                    pos_matched,
                )
            )
            return [], losses

        boxes, scores, labels = self.postprocess_detections(class_logits, box_regression, proposals, image_shapes)
        result = [{"boxes": b, "labels": lab, "scores": s} for b, s, lab in zip(boxes, scores, labels)]
        # the detector's scores travel with the boxes: a confidence-aware switch decides with them
        for r, m in zip(result, self.mask_branch.forward_infer(features, boxes, labels, image_shapes, scores)):
            r.update(m)
        return result, {}

    def _sample_positives(self, positive: Tensor) -> Tensor:
        limit = self.mask_rois_per_image
        if limit is None or positive.numel() <= limit:
            return positive
        return positive[torch.randperm(positive.numel(), device=positive.device)[:limit]]


class BatchedPasteTransform(GeneralizedRCNNTransform):
    """GeneralizedRCNNTransform whose post-processing pastes each mask from its own resolution
    with one batched ``grid_sample`` per resolution instead of torchvision's per-mask loop, in
    the model's mask geometry (set through ``DynaMaskRCNN.mask_geometry``).

    In training it resizes images and boxes as torchvision does, but the ground-truth masks only
    when ``resize_masks`` (``model.mask_targets="resized"`` or the legacy geometry): otherwise the
    masks keep their resolution and the mask branch maps each RoI back onto them
    (:func:`geometry.boxes_to_mask_frame`), so a resize neither shifts them against their boxes
    nor erases the detail the fine stages are trained on."""

    mask_geometry = "exact"
    resize_masks = False

    @classmethod
    def from_transform(cls, t: GeneralizedRCNNTransform) -> BatchedPasteTransform:
        new = cls(
            t.min_size, t.max_size, t.image_mean, t.image_std, size_divisible=t.size_divisible, fixed_size=t.fixed_size
        )
        if hasattr(t, "_skip_resize"):
            new._skip_resize = t._skip_resize
        new.mask_geometry = getattr(t, "mask_geometry", cls.mask_geometry)
        new.resize_masks = getattr(t, "resize_masks", cls.resize_masks)
        return new

    def resize(self, image: Tensor, target: dict[str, Tensor] | None = None):
        masks = None if target is None else target.get("masks")
        if masks is None:
            return super().resize(image, target)
        if self.resize_masks and tuple(masks.shape[-2:]) == tuple(image.shape[-2:]):
            return super().resize(image, target)  # torchvision's own resize, bit for bit
        target = {k: v for k, v in target.items() if k != "masks"}
        image, target = super().resize(image, target)
        if self.resize_masks:  # masks of another size than their image: to the resized image's size
            masks = torch.nn.functional.interpolate(masks[:, None].float(), size=tuple(image.shape[-2:]))[:, 0].byte()
        target["masks"] = masks
        return image, target

    def postprocess(self, result, image_shapes, original_image_sizes):
        if self.training:
            return result
        for pred, im_s, o_im_s in zip(result, image_shapes, original_image_sizes):
            pred["boxes"] = resize_boxes(pred["boxes"], im_s, o_im_s)
            groups = pred.pop("mask_groups", None)
            if groups is not None:
                pred["masks"] = paste_masks_grouped(groups, pred["boxes"], tuple(o_im_s), geometry=self.mask_geometry)
        return result
