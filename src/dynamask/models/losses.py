"""Losses of the DynaMask mask branch.

- every stage is supervised on every positive RoI (deep supervision), mask BCE + edge BCE;
- the selection loss scores each stage's mask on a common footing (upsampled to the finest
  resolution, binarised, mask IoU + boundary IoU against the same target) as a per-RoI cost
  with stop-gradient, and asks the switch to prefer the stages that are cheap *and* good enough;
- the budget loss is a hinge on the mean selected cost relative to the full path, so it is
  zero below the target fraction and grows above it;
- the switch predicts every stage's selection cost (regression), and stops a RoI at
  argmin_k predicted cost_k + λ·F_k/F_max, λ being the price of compute that meets the budget
  target in the training batches (a running mean kept in the model);
- an optional usage-balance term keeps the switch from collapsing to one resolution early.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .geometry import boxes_to_mask_frame, roi_mask_targets


def matched_mask_targets(
    gt_masks: list[Tensor],
    rois: list[Tensor],
    matched_idxs: list[Tensor],
    resolution: int,
    geometry: str,
    image_shapes: list[tuple[int, int]] | None = None,
) -> Tensor:
    """Targets of a batch's positive RoIs: per image, the ground-truth mask each RoI was matched
    to, cropped to the RoI in the model's mask geometry (see :func:`geometry.roi_mask_targets`).

    The masks may be at another resolution than the network input (``image_shapes``, the resized
    images' sizes): with ``model.mask_targets="original"`` they stay at the image's original
    resolution and each RoI is mapped back onto them (:func:`geometry.boxes_to_mask_frame`), so
    no detail is lost to a bitmap resize. Masks of the input's size are used as they are."""
    shapes = image_shapes if image_shapes is not None else [None] * len(rois)
    out = [
        roi_mask_targets(
            masks, boxes_to_mask_frame(boxes, shape, masks.shape[-2:]), resolution, geometry, batch_index=idx
        )
        for masks, boxes, idx, shape in zip(gt_masks, rois, matched_idxs, shapes)
    ]
    return torch.cat(out, 0)


def downsample_targets(target: Tensor, resolutions: tuple[int, ...]) -> dict[int, Tensor]:
    """Area-averaged targets at coarser resolutions from the finest one (N×R×R → {r: N×r×r})."""
    finest = target.shape[-1]
    return {r: F.avg_pool2d(target[:, None], finest // r)[:, 0] if r != finest else target for r in resolutions}


def edge_map(target: Tensor, width: int = 1) -> Tensor:
    """Boundary band (morphological gradient) of a soft mask thresholded at 0.5: N×R×R in {0,1}."""
    binary = (target >= 0.5).to(target.dtype)[:, None]
    k = 2 * width + 1
    dilated = F.max_pool2d(binary, k, stride=1, padding=width)
    eroded = -F.max_pool2d(-binary, k, stride=1, padding=width)
    return (dilated - eroded)[:, 0]


def mask_bce(logits: Tensor, target: Tensor) -> Tensor:
    return F.binary_cross_entropy_with_logits(logits[:, 0], target)


def per_roi_bce(logits: Tensor, target: Tensor) -> Tensor:
    """BCE of N×1×R×R logits against N×R×R targets, averaged per RoI: N (its mean is ``mask_bce``)."""
    return F.binary_cross_entropy_with_logits(logits[:, 0], target, reduction="none").mean(dim=(1, 2))


def _inner_band(mask: Tensor, width: int) -> Tensor:
    """Pixels of a binary mask (N×1×R×R) within ``width`` of its outline, inside the mask."""
    k = 2 * width + 1
    eroded = -F.max_pool2d(-mask, k, stride=1, padding=width)
    return mask - eroded


def selection_costs(
    stage_logits: list[Tensor],
    target: Tensor,
    boxes: Tensor | None = None,
    resolutions: tuple[int, ...] = (14, 28, 56, 112),
) -> Tensor:
    """Per-RoI cost of stopping at each stage (N×K), detached.

    Every stage's mask is upsampled to the target's resolution, then judged as it will be used:
    at the RoI's own pixel size (``boxes``: the smallest of ``resolutions`` that covers the box's
    longer side; a 20-px object is judged on a 28×28 grid, where 14 and 112 look alike),
    binarised at 0.5, scored by (1 − mask IoU) + (1 − boundary IoU) against the target pooled to
    the same grid — the quantities mask AP and boundary AP measure.

    Tried first and replaced: per-pixel BCE at 112 for every RoI. It rates a blurry upsampled
    coarse mask almost as good as a sharp fine one and the switch stopped nearly everything at
    14/28; binarised IoU at 112 for every RoI rewarded 112 on small objects for matching the
    interpolated target, noise the switch could not predict.
    """
    with torch.no_grad():
        size = target.shape[-1]
        probs = [
            F.interpolate(logits.float(), size=(size, size), mode="bilinear", align_corners=False).sigmoid()
            for logits in stage_logits
        ]
        gt = target.float()[:, None]
        if boxes is None:
            grid = torch.full((target.shape[0],), size, device=target.device)
        else:
            side = (boxes[:, 2:] - boxes[:, :2]).max(dim=1).values
            choices = torch.tensor([r for r in resolutions if r <= size], device=target.device)
            grid = choices[torch.searchsorted(choices.float(), side.float().contiguous()).clamp(max=len(choices) - 1)]
        costs = torch.zeros((target.shape[0], len(stage_logits)), device=target.device)  # float32 under autocast too
        for r in grid.unique().tolist():
            idx = torch.nonzero(grid == r).squeeze(1)
            pool = size // int(r)
            t = (F.avg_pool2d(gt[idx], pool) >= 0.5).float() if pool > 1 else (gt[idx] >= 0.5).float()
            width = max(1, round(r * 0.02))
            t_band = _inner_band(t, width)
            for k, p in enumerate(probs):
                pk = F.avg_pool2d(p[idx], pool) if pool > 1 else p[idx]
                pred = (pk > 0.5).float()
                costs[idx, k] = 2.0 - _iou(pred, t) - _iou(_inner_band(pred, width), t_band)
        return costs


def _iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of binary N×1×R×R masks per RoI; two empty masks agree perfectly (IoU 1)."""
    inter = (a * b).sum(dim=(1, 2, 3))
    union = (a + b - a * b).sum(dim=(1, 2, 3))
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def selection_loss(selection: Tensor, costs: Tensor) -> Tensor:
    """Mean over RoIs of the cost of the selected stage (gradient reaches the switch only)."""
    return (selection * costs).sum(dim=1).mean()


def selection_multiplier(costs: Tensor, cost_fractions: Tensor, target: float) -> float:
    """The λ at which stopping each RoI at argmin_k cost_k + λ·F_k/F_max meets the budget target
    in this batch: the price of compute, in selection-cost units (no gradient). ``costs`` are
    true or predicted per-stage costs (N×K). A target below the cheapest stage's share prices
    compute so that every RoI stops at the cheapest stage (never free compute)."""
    from .policy import budget_multiplier

    with torch.no_grad():
        return budget_multiplier(-costs.float(), cost_fractions.to(costs.device).float(), target)


def switch_cost_loss(predicted: Tensor, costs: Tensor) -> Tensor:
    """Regression of every stage's selection cost relative to the RoI's mean over stages
    (smooth L1): only differences between stages decide, and a RoI's overall difficulty (a poor
    box, an odd object) is noise the switch need not predict. Teaching the switch the
    per-batch best stage as a class was tried first: its targets flip with every batch's
    noise, the classifier stayed unsure (max probability ≈ 0.4) and its argmax sent every RoI
    to 28. Costs are continuous, learnable from size and shape, and the decision
    argmin cost + λ·F is then made with one λ learnt over training."""
    centred = costs - costs.mean(dim=1, keepdim=True)
    return F.smooth_l1_loss(predicted - predicted.mean(dim=1, keepdim=True), centred, beta=0.05)


def budget_loss(selection: Tensor, cost_fractions: Tensor, target: float) -> Tensor:
    """max(0, mean_r Σ_k m_rk·F_k/F_max − target): zero at or below the target fraction."""
    used = (selection * cost_fractions.to(selection.dtype)).sum(dim=1).mean()
    return F.relu(used - target)


def balance_loss(probabilities: Tensor) -> Tensor:
    """KL(mean selection probabilities ‖ uniform): discourages early collapse to one stage."""
    mean = probabilities.mean(dim=0).clamp(min=1e-8)
    return (mean * torch.log(mean * mean.numel())).sum()
