"""Losses of the DynaMask mask branch.

- every stage is supervised on every positive RoI (deep supervision), mask BCE + edge BCE;
- the selection loss scores each stage's mask on a common footing (upsampled to the finest
  resolution, against the same target, boundary pixels weighted up) as a per-RoI cost with
  stop-gradient, and asks the switch to prefer the stages that are cheap *and* good enough;
- the budget loss is a hinge on the mean selected cost relative to the full path, so it is
  zero below the target fraction and grows above it;
- an optional usage-balance term keeps the switch from collapsing to one resolution early.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import roi_align


def roi_mask_targets(gt_masks: list[Tensor], rois: list[Tensor], matched_idxs: list[Tensor],
                     resolution: int) -> Tensor:
    """Ground-truth masks cropped to each RoI and resampled to resolution×resolution (soft).

    Same geometry as torchvision's Mask R-CNN targets (``aligned=False``), which is the
    geometry the batched paste reproduces, so targets and pasted masks line up.
    """
    out = []
    for masks, boxes, idx in zip(gt_masks, rois, matched_idxs):
        if boxes.shape[0] == 0:
            out.append(boxes.new_zeros((0, resolution, resolution)))
            continue
        selected = masks[idx][:, None].to(boxes.dtype)
        batch_idx = torch.arange(boxes.shape[0], device=boxes.device, dtype=boxes.dtype)[:, None]
        out.append(roi_align(selected, torch.cat([batch_idx, boxes], 1), (resolution, resolution),
                             spatial_scale=1.0, sampling_ratio=2, aligned=False)[:, 0])
    return torch.cat(out, 0)


def downsample_targets(target: Tensor, resolutions: tuple[int, ...]) -> dict[int, Tensor]:
    """Area-averaged targets at coarser resolutions from the finest one (N×R×R → {r: N×r×r})."""
    finest = target.shape[-1]
    return {r: F.avg_pool2d(target[:, None], finest // r)[:, 0] if r != finest else target
            for r in resolutions}


def edge_map(target: Tensor, width: int = 1) -> Tensor:
    """Boundary band (morphological gradient) of a soft mask thresholded at 0.5: N×R×R in {0,1}."""
    binary = (target >= 0.5).to(target.dtype)[:, None]
    k = 2 * width + 1
    dilated = F.max_pool2d(binary, k, stride=1, padding=width)
    eroded = -F.max_pool2d(-binary, k, stride=1, padding=width)
    return (dilated - eroded)[:, 0]


def mask_bce(logits: Tensor, target: Tensor) -> Tensor:
    return F.binary_cross_entropy_with_logits(logits[:, 0], target)


def selection_costs(stage_logits: list[Tensor], target: Tensor, boundary_weight: float = 4.0) -> Tensor:
    """Per-RoI cost of stopping at each stage (N×K), detached: all stages are upsampled to the
    target's resolution and scored against it, boundary pixels weighted ×(1 + boundary_weight)."""
    with torch.no_grad():
        size = target.shape[-1]
        weight = 1.0 + boundary_weight * edge_map(target, width=max(1, size // 56))
        weight = weight / weight.mean(dim=(1, 2), keepdim=True)
        costs = []
        for logits in stage_logits:
            up = F.interpolate(logits.float(), size=(size, size), mode="bilinear", align_corners=False)[:, 0]
            bce = F.binary_cross_entropy_with_logits(up, target.float(), reduction="none")
            costs.append((bce * weight).mean(dim=(1, 2)))
        return torch.stack(costs, dim=1)


def selection_loss(selection: Tensor, costs: Tensor) -> Tensor:
    """Mean over RoIs of the cost of the selected stage (gradient reaches the switch only)."""
    return (selection * costs).sum(dim=1).mean()


def budget_loss(selection: Tensor, cost_fractions: Tensor, target: float) -> Tensor:
    """max(0, mean_r Σ_k m_rk·F_k/F_max − target): zero at or below the target fraction."""
    used = (selection * cost_fractions.to(selection.dtype)).sum(dim=1).mean()
    return F.relu(used - target)


def balance_loss(probabilities: Tensor) -> Tensor:
    """KL(mean selection probabilities ‖ uniform): discourages early collapse to one stage."""
    mean = probabilities.mean(dim=0).clamp(min=1e-8)
    return (mean * torch.log(mean * mean.numel())).sum()
