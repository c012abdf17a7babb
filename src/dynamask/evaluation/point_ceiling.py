"""The model-free ceiling of point-sparse mask refinement (issue 31, part 1).

A planned "points" mode of the mask head refines 28 → 56 → 112 by re-predicting only the N most
uncertain cells of the previous stage's ×2-upsampled map; every other cell keeps the upsampled
coarse value. Before any model is built, this module measures what that procedure can give at
best: the "predictions" are the ground truth itself, so every gap left is the procedure's own.

Per instance (mask M, box in pixel-edge coordinates), with T_R = :func:`roi_mask_targets` (the soft
area-averaged targets a head of resolution R is trained on):

* step 28: P28 = T28;
* step 2R: U = bilinear ×2 upsample of P_R (``align_corners=False``: P_R sampled at the 2R grid's
  cell centres); the N cells of U with the smallest ``|U − 0.5|`` (the **most uncertain**; chosen
  by ``torch.topk``, ties broken as topk breaks them) take T_2R's values there → P_2R;
* after each step the map is pasted into the image (:func:`paste_masks`) and binarised at 0.5, as
  :func:`round_trip_masks` does. With N = all cells the chain is the dense round trip, with N = 0
  the plain upsampled-28 chain.

Ties (cells of exactly equal ``|U − 0.5|``, mostly exact 0 or 1 once N exceeds the cells near the
outline) go as topk breaks them; breaking them the other way (40 of the benchmark's shapes
images and its VOC photo) moved no mean mask IoU by more than 4e-5.

The rule looks only at the coarse map: a thin part the 28 grid averaged away (a spoke of one
pixel in a 7-pixel cell reads ≈ 0.14) looks nearly certain background, ranked behind every
outline cell, so a small budget spends no point on it — :func:`point_ceiling` counts the pixels
that cost (``thin``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..models.geometry import check_geometry, roi_mask_targets
from ..models.paste import paste_masks
from .yardstick import boundary_dilation, mask_boundary

__all__ = [
    "SELECTION_RULE",
    "PointCeiling",
    "PointChain",
    "concat",
    "point_ceiling",
    "point_chain",
    "refine_points",
    "select_uncertain",
    "upsample2x",
]

#: the selection rule, as results files state it
SELECTION_RULE = (
    "most uncertain = the N cells of the x2-upsampled previous map (bilinear, align_corners=False) "
    "with the smallest |p - 0.5| (torch.topk, largest=False; ties as topk breaks them)"
)


def upsample2x(maps: Tensor) -> Tensor:
    """N×R×R → N×2R×2R, bilinear with ``align_corners=False``: each new cell is the coarse map
    sampled at that cell's centre (clamped at the border) — the head's stage-to-stage upsampling."""
    return F.interpolate(maps[:, None], scale_factor=2, mode="bilinear", align_corners=False)[:, 0]


def select_uncertain(maps: Tensor, n: int) -> Tensor:
    """Flat indices (N×n, int64) of the n cells of each map with the smallest ``|p − 0.5|``."""
    flat = (maps - 0.5).abs().flatten(1)
    n = max(0, min(int(n), flat.shape[1]))
    return torch.topk(flat, n, dim=1, largest=False, sorted=False).indices


def refine_points(coarse: Tensor, target: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """One point step: ``coarse`` (N×R×R) upsampled ×2, its n most uncertain cells replaced by
    ``target``'s (N×2R×2R). Returns (the refined N×2R×2R map, the N×2R×2R bool cells replaced).
    n ≥ (2R)² replaces every cell (the result is ``target`` itself); n = 0 none."""
    up = upsample2x(coarse.to(target.dtype))
    if up.shape != target.shape:
        raise ValueError(f"target must be {tuple(up.shape)}, got {tuple(target.shape)}")
    idx = select_uncertain(up, n)
    flat = up.flatten(1).scatter(1, idx, target.flatten(1).gather(1, idx))
    chosen = torch.zeros_like(flat, dtype=torch.bool).scatter_(1, idx, True)
    return flat.view_as(up), chosen.view_as(up)


@dataclass
class PointChain:
    """One chain's maps, replaced cells and pasted masks, per resolution (keys 28, 56, 112...).

    ``maps[R]``: N×R×R soft maps; ``chosen[R]``: N×R×R bool, the cells replaced at step R (absent
    for the first resolution); ``masks[R]``: N×H×W bool, the map pasted and binarised at 0.5."""

    maps: dict[int, Tensor]
    chosen: dict[int, Tensor]
    masks: dict[int, Tensor]


def point_chain(
    masks: Tensor,
    boxes: Tensor,
    points: int | None,
    resolutions: Sequence[int] = (28, 56, 112),
    geometry: str = "exact",
    targets: dict[int, Tensor] | None = None,
) -> PointChain:
    """The point chain on ground-truth masks (N×H×W) in their boxes (N×4, pixel-edge x0, y0, x1, y1).

    ``points``: N cells replaced at every step after the first (None: all of them, the dense round
    trip; 0: the plain upsampled chain). ``resolutions`` must double at each step. ``targets``
    ({R: N×R×R}) may pass precomputed :func:`roi_mask_targets` (to share them between chains).
    Batched over instances: one target, upsample, top-k and paste call per step."""
    check_geometry(geometry)
    resolutions = tuple(int(r) for r in resolutions)
    if any(b != 2 * a for a, b in zip(resolutions, resolutions[1:])):
        raise ValueError(f"resolutions must double at each step, got {resolutions}")
    if targets is None:
        targets = {r: roi_mask_targets(masks, boxes, r, geometry) for r in resolutions}
    size = masks.shape[-2:]
    maps, chosen, out = {}, {}, {}
    prev = None
    for r in resolutions:
        if prev is None:
            maps[r] = targets[r]
        else:
            n = r * r if points is None else int(points)
            maps[r], chosen[r] = refine_points(prev, targets[r], n)
        out[r] = paste_masks(maps[r][:, None], boxes, size, geometry=geometry)[:, 0] >= 0.5
        prev = maps[r]
    return PointChain(maps, chosen, out)


def _cells_of_pixels(cells: Tensor, boxes: Tensor, size) -> Tensor:
    """N×R×R bool cells looked up at every pixel centre of an H×W image (the cell of the box grid
    the centre falls in; False outside the box): N×H×W bool."""
    n, r = cells.shape[0], cells.shape[-1]
    h, w = int(size[0]), int(size[1])
    b = boxes.to(torch.float64)
    bw = (b[:, 2] - b[:, 0]).clamp(min=1e-6)
    bh = (b[:, 3] - b[:, 1]).clamp(min=1e-6)
    fx = ((torch.arange(w, dtype=torch.float64)[None] + 0.5 - b[:, :1]) / bw[:, None] * r).floor()
    fy = ((torch.arange(h, dtype=torch.float64)[None] + 0.5 - b[:, 1:2]) / bh[:, None] * r).floor()
    ix, iy = fx.clamp(0, r - 1).long(), fy.clamp(0, r - 1).long()
    inside = ((fy >= 0) & (fy < r))[:, :, None] & ((fx >= 0) & (fx < r))[:, None, :]
    looked = cells[torch.arange(n)[:, None, None], iy[:, :, None], ix[:, None, :]]
    return looked & inside


def _mask_iou(pred: Tensor, gt: Tensor) -> np.ndarray:
    inter = (pred & gt).flatten(1).sum(1).double()
    union = (pred | gt).flatten(1).sum(1).double()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union)).numpy()


@dataclass
class PointCeiling:
    """Per-instance results of :func:`point_ceiling`.

    ``mask_iou[(label, R)]`` / ``boundary_iou[(label, R)]``: float64 arrays, one value per
    instance; label ``"dense"`` (every cell replaced), ``"N=0"`` (plain upsampled chain) or
    ``"N=<n>"``; step 28 is the same for all chains and kept under ``("28", 28)``.
    ``thin[label]``: pixel counts at the last step, per instance (int64 arrays): ``wrong`` (chain ≠
    M), ``dense_wrong`` (dense round trip ≠ M), ``excess`` (chain wrong where the dense trip is
    right), ``thin`` (of ``excess``: wrong already in the first resolution's round trip, and in no
    cell chosen at any step — detail lost at 28 that never looked uncertain enough; with a small N
    also outline the budget ran out before), ``thin_fg`` (of
    ``thin``: pixels of M, the missing thin parts), ``lost_fg`` (pixels of M wrong in the first
    resolution's round trip) and ``lost_fg_unchosen`` (of those, in no chosen cell)."""

    resolutions: tuple[int, ...]
    mask_iou: dict[tuple[str, int], np.ndarray]
    boundary_iou: dict[tuple[str, int], np.ndarray]
    thin: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)


def point_ceiling(
    masks: Tensor,
    boxes: Tensor,
    points: Sequence[int] = (196, 392, 784, 1568),
    resolutions: Sequence[int] = (28, 56, 112),
    geometry: str = "exact",
    dilation_ratio: float = 0.02,
    boundary: bool = True,
) -> PointCeiling:
    """Mask IoU, boundary IoU (the yardstick's: band = ``dilation_ratio`` × image diagonal) and the
    thin-part count of every chain — N in ``points``, N = 0 and dense — against the masks
    themselves, for one image's instances (masks N×H×W, boxes N×4 pixel-edge, e.g. the masks'
    tight boxes). Boundary IoU loops over instances (OpenCV erosion); everything else is batched."""
    resolutions = tuple(int(r) for r in resolutions)
    gt = masks.bool()
    n_inst = gt.shape[0]
    size = gt.shape[-2:]
    targets = {r: roi_mask_targets(masks, boxes, r, geometry) for r in resolutions}
    labels: list[tuple[str, int | None]] = [("dense", None), ("N=0", 0)] + [(f"N={int(p)}", int(p)) for p in points]
    d = boundary_dilation(int(size[0]), int(size[1]), dilation_ratio)
    gt_np = gt.numpy()
    gt_bands = [mask_boundary(g, d).astype(bool) for g in gt_np] if boundary else []

    def bnd(pred: Tensor) -> np.ndarray:
        vals = np.full(n_inst, np.nan)
        if boundary:
            for k, p in enumerate(pred.numpy()):
                bp = mask_boundary(p, d).astype(bool)
                union = int(np.count_nonzero(gt_bands[k] | bp))
                vals[k] = 1.0 if union == 0 else int(np.count_nonzero(gt_bands[k] & bp)) / union
        return vals

    mask_iou, b_iou, thin = {}, {}, {}
    chains = {label: point_chain(masks, boxes, p, resolutions, geometry, targets) for label, p in labels}
    first, last = resolutions[0], resolutions[-1]
    base = chains["dense"].masks[first]
    mask_iou[(str(first), first)], b_iou[(str(first), first)] = _mask_iou(base, gt), bnd(base)
    lost = base ^ gt
    dense_wrong = chains["dense"].masks[last] ^ gt
    for label, chain in chains.items():
        for r in resolutions[1:]:
            mask_iou[(label, r)], b_iou[(label, r)] = _mask_iou(chain.masks[r], gt), bnd(chain.masks[r])
        reached = torch.zeros_like(gt)
        for r in resolutions[1:]:
            reached |= _cells_of_pixels(chain.chosen[r], boxes, size)
        wrong = chain.masks[last] ^ gt
        excess = wrong & ~dense_wrong
        thin_px = excess & lost & ~reached

        def count(x: Tensor) -> np.ndarray:
            return x.flatten(1).sum(1).numpy().astype(np.int64)

        thin[label] = {
            "wrong": count(wrong),
            "dense_wrong": count(dense_wrong),
            "excess": count(excess),
            "thin": count(thin_px),
            "thin_fg": count(thin_px & gt),
            "lost_fg": count(lost & gt),
            "lost_fg_unchosen": count(lost & gt & ~reached),
        }
    return PointCeiling(resolutions, mask_iou, b_iou, thin)


def concat(results: Sequence[PointCeiling]) -> PointCeiling:
    """Several images' :class:`PointCeiling` as one (instances in the order given)."""
    if not results:
        raise ValueError("nothing to concatenate")
    first = results[0]
    return PointCeiling(
        first.resolutions,
        {k: np.concatenate([r.mask_iou[k] for r in results]) for k in first.mask_iou},
        {k: np.concatenate([r.boundary_iou[k] for r in results]) for k in first.boundary_iou},
        {lab: {c: np.concatenate([r.thin[lab][c] for r in results]) for c in first.thin[lab]} for lab in first.thin},
    )
