"""Point-sparse refinement: the 56 and 112 stages computed only where the outline is.

With ``refinement="points"`` the r-FPN keeps its dense 14 and 28 stages, and each finer stage
(56, 112) becomes a :class:`PointStage`: the previous stage's logits are upsampled ×2 (bilinear,
the value a dense stage would start from), and only the N most uncertain cells of that grid
(|logit| smallest, i.e. |p − 0.5| smallest) are re-predicted by a small per-point MLP from
features sampled at those points — the image-level FPN level the dense stage would pool (P3 at
56, P2 at 112), the 28 stage's region feature and the coarse logit. Everything else keeps the
upsampled value. No convolution ever runs over a dense 56×56 or 112×112 map, in training or at
inference; what changes between 28 and 112 is a band along the outline, and only it is paid for.

Training follows PointRend's recipe (Kirillov et al., 2020): per RoI, ``oversample`` × N random
points, of which the ``importance`` × N most uncertain are kept plus (1 − importance) × N uniform
ones, supervised by the ground truth read at those exact coordinates from the original-resolution
masks (no resampled bitmap in between) — their mask value and whether the outline passes within
one cell of the stage. Each stage also runs as inference does (top-N cells, no gradient): that
map is what the next stage refines and what the switch's selection costs judge.

Every point read is a bilinear sample (:func:`bilinear_rows`: an ``embedding_bag`` over the four
neighbours' channels-last rows; ``grid_sample`` while exporting); :func:`grid_sample_flops` is its
formula, used by the FLOPs table, and the counter (``flops.count_flops``) counts both ops alike.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .flops import BILINEAR_SAMPLE_FLOPS, linear_flops
from .geometry import boxes_to_mask_frame
from .roi_utils import exporting, level_scale

REFINEMENTS = ("dense", "points")
#: default points re-predicted per RoI and point stage at inference, and supervised per RoI and
#: stage in training (PointRend's split: few importance-sampled points to learn from, more to
#: refine with). 1568 at inference meets the dense 112 head's boundary AP on the 256-px benchmark
#: where 784 does not (BENCHMARKS.md); training with 784 is as fast as torchvision's Mask R-CNN.
INFERENCE_POINTS = 1568
TRAINING_POINTS = 784
#: PointRend's training sampler: candidates per point, and the share taken by uncertainty
OVERSAMPLE = 3
IMPORTANCE = 0.75


def check_refinement(refinement: str) -> str:
    if refinement not in REFINEMENTS:
        raise ValueError(f"refinement must be one of {', '.join(REFINEMENTS)}; got {refinement!r}")
    return refinement


def grid_sample_flops(channels: int, points: int) -> int:
    """Bilinear ``grid_sample`` of ``channels`` at ``points`` locations: 4 multiply-adds each."""
    return channels * points * BILINEAR_SAMPLE_FLOPS


def grid_cell_points(index: Tensor, side: int) -> Tensor:
    """Centres of cells ``index`` (N×P flat indices) of a side×side grid over the RoI, as (u, v)
    in [0, 1]² (u along x): N×P×2."""
    row = torch.div(index, side, rounding_mode="floor")
    col = index - row * side
    return torch.stack([(col.to(torch.float32) + 0.5) / side, (row.to(torch.float32) + 0.5) / side], dim=-1)


def most_uncertain_cells(logits: Tensor, count: int) -> Tensor:
    """Flat indices of the ``count`` cells with the smallest |logit| (N×1×S×S → N×count)."""
    flat = logits.flatten(1)
    return torch.topk(-flat.abs(), min(count, flat.shape[1]), dim=1, sorted=False).indices


def importance_points(
    coarse: Tensor, count: int, oversample: int = OVERSAMPLE, importance: float = IMPORTANCE
) -> Tensor:
    """PointRend's training points over each RoI: N×count×2 in [0, 1]² (no gradient)."""
    n = coarse.shape[0]
    with torch.no_grad():
        candidates = torch.rand(n, count * oversample, 2, device=coarse.device)
        values = sample_in_rois(coarse.float(), candidates)[..., 0]  # N×(count·oversample)
        uncertain = int(importance * count)
        idx = torch.topk(-values.abs(), uncertain, dim=1).indices
        chosen = torch.gather(candidates, 1, idx[..., None].expand(-1, -1, 2))
        rest = torch.rand(n, count - uncertain, 2, device=coarse.device)
        return torch.cat([chosen, rest], dim=1)


def bilinear_rows(rows: Tensor, base: Tensor, height: int, width: int, x: Tensor, y: Tensor) -> Tensor:
    """Bilinear reads of channels-last maps: ``rows`` (M·H·W)×C, one row per cell of M stacked
    H×W maps; the read at (x, y) (cell-centre coordinates, cell i's centre at i) of map ``base``
    (its first row index, same shape as x) → x.shape + (C,).

    The same arithmetic as ``grid_sample(..., padding_mode="border", align_corners=False)``
    (coordinates clamped to the centres' hull, then the four neighbours), but gathering whole
    rows: on a CPU ``grid_sample`` walks a 256-channel map one channel plane at a time and
    returns channels first, which the MLP must transpose; one ``embedding_bag`` over the four
    neighbours' rows is 3–5× faster and hands the MLP its N·P×C input directly. Its FLOPs are the
    counter's ``embedding_bag`` formula: 4 multiply-adds per channel, as ``grid_sample``'s."""
    x = x.clamp(0, width - 1)
    y = y.clamp(0, height - 1)
    x0, y0 = torch.floor(x), torch.floor(y)
    lx, ly = x - x0, y - y0
    x0, y0 = x0.to(torch.int64), y0.to(torch.int64)
    x1, y1 = (x0 + 1).clamp(max=width - 1), (y0 + 1).clamp(max=height - 1)
    base = base.to(torch.int64)
    index = torch.stack([y0 * width + x0, y0 * width + x1, y1 * width + x0, y1 * width + x1], dim=-1) + base[..., None]
    weight = torch.stack([(1 - ly) * (1 - lx), (1 - ly) * lx, ly * (1 - lx), ly * lx], dim=-1).to(rows.dtype)
    out = F.embedding_bag(index.reshape(-1, 4), rows, per_sample_weights=weight.reshape(-1, 4), mode="sum")
    return out.reshape(*x.shape, rows.shape[1])


def channels_last_rows(maps: Tensor) -> Tensor:
    """B×C×H×W → (B·H·W)×C, the table :func:`bilinear_rows` reads."""
    return maps.permute(0, 2, 3, 1).contiguous().reshape(-1, maps.shape[1])


def sample_in_rois(maps: Tensor, points: Tensor) -> Tensor:
    """Bilinear values of per-RoI maps (N×C×S×S, cells tiling the RoI) at points (N×P×2 in
    [0, 1]²): N×P×C. Outside the cell centres' hull the border cells extend (as ×2 upsampling)."""
    if exporting():  # grid_sample exports (ONNX GridSample); embedding_bag does not
        grid = (2.0 * points - 1.0)[:, :, None, :].to(maps.dtype)
        out = F.grid_sample(maps, grid, mode="bilinear", padding_mode="border", align_corners=False)
        return out[..., 0].permute(0, 2, 1)
    n, _, h, w = maps.shape
    xy = points.to(maps.dtype) * torch.tensor([w, h], dtype=maps.dtype, device=maps.device) - 0.5
    base = (torch.arange(n, device=maps.device) * (h * w))[:, None].expand(n, points.shape[1])
    return bilinear_rows(channels_last_rows(maps), base, h, w, xy[..., 0], xy[..., 1])


def sample_in_image(feature: Tensor, rois: Tensor, points: Tensor, image_shapes) -> Tensor:
    """Bilinear values of an FPN map (B×C×H×W, batch-padded) at RoI points: N×P×C.

    ``rois`` N×5 (batch index, x0, y0, x1, y1) in network-input pixels, points (u, v) in the box.
    The map's cell i covers input pixels [i, i + 1]/scale, as RoIAlign ``aligned=True`` reads
    it; points between the outermost cell centres and the map's edge take the edge cells' values,
    as RoIAlign's samples do there (boxes are clipped to the image, so no point lies further out)."""
    scale = level_scale(feature, image_shapes)
    boxes = rois[:, 1:].to(feature.dtype)
    xy = boxes[:, None, :2] + points.to(feature.dtype) * (boxes[:, None, 2:] - boxes[:, None, :2])
    if exporting():
        return _sample_in_image_exported(feature, rois, xy, scale)
    h, w = feature.shape[-2:]
    cell = xy * scale - 0.5  # cell-centre coordinates: the centre of cell i at i
    base = (rois[:, 0].to(torch.int64) * (h * w))[:, None].expand(-1, points.shape[1])
    return bilinear_rows(channels_last_rows(feature), base, h, w, cell[..., 0], cell[..., 1])


def _sample_in_image_exported(feature: Tensor, rois: Tensor, xy: Tensor, scale: float) -> Tensor:
    """:func:`sample_in_image` as ONNX / TorchScript record it: ``grid_sample`` (exports are one image).
    The map's size and the RoI count are read as tensors (``_shape_as_tensor``, ``-1``), so that the
    recorded graph follows the image it runs on, not the one it was traced with."""
    hw = torch._shape_as_tensor(feature)[2:].to(feature.dtype)  # (H, W): a Shape op in the graph
    size = torch.stack([hw[1], hw[0]])
    grid = (2.0 * xy * scale / size - 1.0).reshape(1, -1, 1, 2)
    out = F.grid_sample(feature[:1], grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out[0, :, :, 0].reshape(feature.shape[1], -1, xy.shape[1]).permute(1, 2, 0)


def point_targets(
    gt_masks: list[Tensor],
    rois: list[Tensor],
    matched_idxs: list[Tensor],
    points: Tensor,
    resolution: int,
    image_shapes=None,
) -> tuple[Tensor, Tensor]:
    """Ground truth at the training points, read from the original-resolution masks: (mask value
    N×P in {0, 1}, edge N×P in {0, 1}).

    A point at (u, v) of a box [x0, x1] × [y0, y1] lies at x = x0 + u·(x1 − x0) in the masks'
    pixel-edge frame (boxes mapped onto the masks as the dense targets are,
    :func:`geometry.boxes_to_mask_frame`), i.e. in pixel ⌊x⌋; outside the image the mask is 0.
    A point is on the edge when the mask is not constant over it and its 8 neighbours one stage
    cell (box / ``resolution``) away: the morphological gradient of width one cell that the dense
    stages' edge targets use (``losses.edge_map``)."""
    values, edges, start = [], [], 0
    shapes = image_shapes if image_shapes is not None else [None] * len(rois)
    for masks, boxes, idx, shape in zip(gt_masks, rois, matched_idxs, shapes):
        n = boxes.shape[0]
        pts = points[start : start + n]
        start += n
        frame = boxes_to_mask_frame(boxes, shape, masks.shape[-2:]).to(pts.dtype)
        size = frame[:, 2:] - frame[:, :2]
        xy = frame[:, None, :2] + pts * size[:, None]
        cell = size[:, None] / resolution
        reads = []
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                offset = torch.tensor([dx, dy], dtype=pts.dtype, device=pts.device)
                reads.append(_read_mask(masks, idx, xy + offset * cell))
        stack = torch.stack(reads, dim=0)  # 9×n×P
        values.append(reads[4])
        edges.append((stack.amax(dim=0) != stack.amin(dim=0)).to(pts.dtype))
    return torch.cat(values).to(points.dtype), torch.cat(edges)


def _read_mask(masks: Tensor, mask_index: Tensor, xy: Tensor) -> Tensor:
    """masks[mask_index[i]] at pixel ⌊xy[i, p]⌋ (0 outside the image): n×P floats."""
    h, w = masks.shape[-2:]
    col = torch.floor(xy[..., 0]).to(torch.int64)
    row = torch.floor(xy[..., 1]).to(torch.int64)
    inside = (col >= 0) & (col < w) & (row >= 0) & (row < h)
    flat = mask_index.to(torch.int64)[:, None] * (h * w) + row.clamp(0, h - 1) * w + col.clamp(0, w - 1)
    return (inside & (masks.reshape(-1)[flat].float() >= 0.5)).to(xy.dtype)


class PointStage(nn.Module):
    """One sparse stage: re-predicts chosen points of the ×2-upsampled previous logits.

    Per point: the image-level feature (``image_channels`` wide, reduced to ``reduced_channels``
    by a bias-free linear map that commutes with the sampling, so training may reduce the whole
    map first as the dense FAM does), the 28 stage's region feature (``region_channels``) and
    the coarse logit → a three-layer MLP of width ``hidden`` (the coarse logit appended to every
    layer's input, as PointRend does) → a correction added to the coarse logit (``num_mask_channels``;
    the RoI's class channel is taken) and an edge logit. The correction starts near zero, so an
    untrained stage reproduces the upsampled coarse mask instead of writing p ≈ 0.5 along the outline."""

    def __init__(
        self, image_channels: int, reduced_channels: int, region_channels: int, hidden: int, num_mask_channels: int
    ):
        super().__init__()
        self.image_channels, self.reduced_channels = image_channels, reduced_channels
        self.region_channels, self.num_mask_channels = region_channels, num_mask_channels
        self.reduce = nn.Linear(image_channels, reduced_channels, bias=False)
        self.reduce_bias = nn.Parameter(torch.zeros(reduced_channels))
        self.fc1 = nn.Linear(reduced_channels + region_channels + 1, hidden)
        self.fc2 = nn.Linear(hidden + 1, hidden)
        self.out = nn.Linear(hidden + 1, num_mask_channels + 1)
        for fc in (self.reduce, self.fc1, self.fc2):
            nn.init.kaiming_normal_(fc.weight, nonlinearity="relu")
        for fc in (self.fc1, self.fc2):
            nn.init.zeros_(fc.bias)
        nn.init.normal_(self.out.weight, std=0.001)
        nn.init.zeros_(self.out.bias)

    def reduce_image_feature(self, feature: Tensor) -> Tensor:
        """The bias-free reduction on a whole B×C×H×W map (training: few channels to sample)."""
        return F.conv2d(feature, self.reduce.weight[:, :, None, None])

    def forward(
        self,
        image_points: Tensor,
        region_points: Tensor,
        coarse_points: Tensor,
        labels: Tensor,
        image_reduced: bool = False,
    ) -> tuple[Tensor, Tensor]:
        """Sampled features N×P×C (image, region) and coarse logits N×P → (mask logits N×P of
        the RoI's class, edge logits N×P)."""
        n, p = coarse_points.shape
        image = image_points.reshape(n * p, image_points.shape[-1])
        if not image_reduced:
            image = self.reduce(image)
        image = F.relu(image + self.reduce_bias.to(image.dtype))
        region = region_points.reshape(n * p, region_points.shape[-1])
        coarse = coarse_points.reshape(n * p, 1)
        x = F.relu(self.fc1(torch.cat([image, region, coarse], dim=1)))
        x = F.relu(self.fc2(torch.cat([x, coarse], dim=1)))
        out = self.out(torch.cat([x, coarse], dim=1)).reshape(n, p, self.num_mask_channels + 1)
        k = self.num_mask_channels
        if k == 1:
            mask = out[..., 0]
        else:
            index = torch.arange(n, device=out.device)
            mask = out[index, :, labels.clamp(0, k - 1)]
        # a correction of the coarse logit: a new stage starts as the upsampled coarse mask
        return coarse_points + mask, out[..., k]

    def point_flops(self) -> int:
        """FLOPs of one re-predicted point: the three samples (image feature, region feature; the
        coarse logit is read off the upsampled map), the reduction and the MLP."""
        total = grid_sample_flops(self.image_channels, 1) + grid_sample_flops(self.region_channels, 1)
        total += linear_flops(self.reduce) + linear_flops(self.fc1) + linear_flops(self.fc2) + linear_flops(self.out)
        return total


def upsample2(logits: Tensor) -> Tensor:
    """×2 bilinear upsampling of N×1×S×S logits (cell centres of the finer grid, align_corners=False)."""
    return F.interpolate(logits, scale_factor=2.0, mode="bilinear", align_corners=False)


def refine_at_points(
    stage: PointStage,
    coarse_map: Tensor,
    count: int,
    image_feature: Tensor,
    rois: Tensor,
    region: Tensor,
    labels: Tensor,
    image_shapes,
    image_reduced: bool = False,
) -> Tensor:
    """The inference form of a sparse stage: the ×2-upsampled ``coarse_map`` (N×1×S×S) with its
    ``count`` most uncertain cells re-predicted → N×1×2S×2S logits. ``image_feature`` is the FPN
    level, or (``image_reduced``) its :meth:`PointStage.reduce_image_feature`."""
    up = upsample2(coarse_map)
    side = up.shape[-1]
    index = most_uncertain_cells(up, count)
    points = grid_cell_points(index, side)
    coarse = torch.gather(up.flatten(1), 1, index)
    mask, _ = stage(
        sample_in_image(image_feature, rois, points, image_shapes),
        sample_in_rois(region, points),
        coarse,
        labels,
        image_reduced=image_reduced,
    )
    return up.flatten(1).scatter(1, index, mask.to(up.dtype)).reshape(up.shape)
