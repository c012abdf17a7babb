"""The point stages of the DynaMask head (56 and 112 with ``refinement="points"``), in training
and at inference.

The modules and the point arithmetic are in point_refine.py; here is how the head runs them.
In training each point stage is supervised at importance-sampled points by the ground truth at
those coordinates (PointRend's recipe), and also run as inference runs it — top-N cells, no
gradient — because that map is what the next stage refines and what the switch's selection
costs judge. At inference a point stage re-predicts the most uncertain cells of the previous
stage's upsampled logits, for the RoIs that reach it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from . import losses as L
from .mask_switch import SwitchInput
from .point_refine import importance_points, point_targets, refine_at_points, sample_in_image, sample_in_rois
from .policy import RESOLUTIONS
from .roi_utils import rois_with_batch_index


class PointStagesMixin:
    """The point-stage passes of :class:`~dynamask.models.dynamask_head.DynaMaskHead` (mixed into
    it; the dense stages and the switch's losses come from its training part, head_training.py)."""

    def _forward_train_points(
        self,
        features: dict[str, Tensor],
        rois: list[Tensor],
        image_shapes,
        gt_masks: list[Tensor],
        matched_idxs: list[Tensor],
        labels: Tensor,
        x: Tensor,
    ) -> dict[str, Tensor]:
        """Training with point stages: the dense stages as usual; each point stage is supervised at
        importance-sampled points by the ground truth at those coordinates, and also run as
        inference runs it (top-N cells, no gradient) — the map the next stage refines and the
        switch's selection costs judge."""
        boxes = torch.cat(rois)
        roi5 = rois_with_batch_index(rois)
        dense = len(self.predictors)
        dynamic = self._policy == "dynamic"
        # the switch judges every stage against one 112×112 target; else no target finer than 28 is built
        top = RESOLUTIONS[-1] if dynamic else RESOLUTIONS[dense - 1]
        targets = L.downsample_targets(
            L.matched_mask_targets(gt_masks, rois, matched_idxs, top, self.mask_geometry, image_shapes),
            tuple(r for r in RESOLUTIONS if r <= top),
        )
        stages, region = self._dense_stages(x, features, roi5, image_shapes, labels)
        losses: dict[str, Tensor] = {}
        edges = []
        for k, (mask_logits, edge_logits) in enumerate(stages):
            r = RESOLUTIONS[k]
            losses[f"loss_mask_{r}"] = self.stage_loss_weights[k] * L.mask_bce(mask_logits, targets[r])
            edges.append(L.per_roi_bce(edge_logits, L.edge_map(targets[r])))
        maps = [mask_logits for mask_logits, _ in stages]
        coarse = maps[-1]
        for j, stage in enumerate(self.point_stages):
            k = dense + j
            r, count = RESOLUTIONS[k], self.stage_points(k)
            reduced = stage.reduce_image_feature(features[self.image_levels[k - 1]])
            points = importance_points(coarse.detach(), min(self.refinement_train_points, r * r))
            mask, edge = stage(
                sample_in_image(reduced, roi5, points, image_shapes),
                sample_in_rois(region, points),
                sample_in_rois(coarse, points)[..., 0],
                labels,
                image_reduced=True,
            )
            mask_target, edge_target = point_targets(gt_masks, rois, matched_idxs, points, r, image_shapes)
            losses[f"loss_mask_{r}"] = self.stage_loss_weights[k] * F.binary_cross_entropy_with_logits(
                mask, mask_target.to(mask.dtype)
            )
            edges.append(
                F.binary_cross_entropy_with_logits(edge, edge_target.to(edge.dtype), reduction="none").mean(dim=1)
            )
            with torch.no_grad():
                coarse = refine_at_points(
                    stage, coarse.detach(), count, reduced, roi5, region, labels, image_shapes, image_reduced=True
                )
            maps.append(coarse)
        weights = torch.tensor(self.stage_loss_weights[: self.num_stages], device=x.device)
        edge_losses = torch.stack(edges, dim=1) * weights.to(edges[0].dtype)
        losses["loss_mask_edge"] = self.edge_loss_weight * edge_losses.sum(dim=1).mean()
        if dynamic:
            mask0, edge0 = stages[0]
            inp = SwitchInput(features, roi5, image_shapes, x, mask0, edge0)
            losses.update(self._cost_switch_losses(inp, maps, targets[RESOLUTIONS[-1]], boxes))
        return losses

    def _refine_point_stage(
        self,
        k: int,
        coarse: Tensor,
        features: dict[str, Tensor],
        roi5: Tensor,
        region: Tensor,
        labels: Tensor,
        image_shapes,
    ) -> Tensor:
        """Point stage ``k`` at inference: the previous stage's logits ``coarse`` upsampled ×2, its
        most uncertain cells re-predicted from the FPN level, the 28 stage's ``region`` feature and
        the coarse logit."""
        return refine_at_points(
            self.point_stages[k - len(self.predictors)],
            coarse,
            self.stage_points(k),
            features[self.image_levels[k - 1]],
            roi5,
            region,
            labels,
            image_shapes,
        )
