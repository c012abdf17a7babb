"""Mask Switch Modules: pick, per RoI, the resolution at which its mask may stop.

Two switches, chosen with ``switch=``:

- :class:`CostSwitch` (``"cost"``, the default, this project's design): reads what stage 0 has
  already computed for every RoI — the 14×14 region feature, mask and edge probabilities — plus
  the box size, and *regresses* the selection cost of stopping at each stage. A RoI stops at
  argmin_k cost_k + λ·F_k/F_max, λ being the price of compute that met the budget target in
  training, kept in the switch (``price``). Costs next to nothing (docs, "How it works").
- :class:`PaperSwitch` (``"paper"``): the module as the authors built it — a detached 56×56
  RoIAlign of P2 through two small conv blocks and two FC layers to four logits, trained end to
  end through straight-through Gumbel-softmax with the paper's losses. No price, no cost
  regression. Its 56×56 pooling and 1×1 conv over 256 channels cost about as much as stopping at
  28; that cost is counted in ``mask_flops`` and in the budget.

Both read a :class:`SwitchInput` and take what they need from it, detached: a switch learns
from its own losses only and never pulls on the mask head's features.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import roi_align

from .flops import conv2d_flops, linear_flops, roi_align_flops
from .roi_utils import level_scale

SWITCHES = ("cost", "paper")


def check_switch(kind: str) -> str:
    if kind not in SWITCHES:
        raise ValueError(f"switch must be one of {', '.join(SWITCHES)}; got {kind!r}")
    return kind


@dataclass
class SwitchInput:
    """What a switch may read for N RoIs."""

    features: dict[str, Tensor]  # FPN maps
    rois: Tensor  # N×5 (batch index, x0, y0, x1, y1), network-input pixels
    image_shapes: list[tuple[int, int]]
    region: Tensor  # N×C×14×14 stage-0 region feature
    mask_logits: Tensor  # N×1×14×14 stage-0 mask logits
    edge_logits: Tensor  # N×1×14×14 stage-0 edge logits
    detection_scores: Tensor | None = None  # N detector scores at inference (None in training)

    @property
    def boxes(self) -> Tensor:
        return self.rois[:, 1:]

    def select(self, index: Tensor) -> SwitchInput:
        """The same input for a subset of the RoIs (a bool mask or indices)."""
        scores = None if self.detection_scores is None else self.detection_scores[index]
        return SwitchInput(
            self.features,
            self.rois[index],
            self.image_shapes,
            self.region[index],
            self.mask_logits[index],
            self.edge_logits[index],
            scores,
        )


class CostSwitch(nn.Module):
    """Predicts, per RoI, the selection cost of stopping at each stage (N×K, lower is better)."""

    kind = "cost"

    def __init__(
        self, in_channels: int, num_choices: int = 4, resolution: int = 14, reduced_channels: int = 32, hidden: int = 64
    ):
        super().__init__()
        self.resolution = resolution
        self.reduce = nn.Conv2d(in_channels + 2, reduced_channels, 1)
        self.down = nn.Conv2d(reduced_channels, 16, 3, stride=2, padding=1)
        self.down_hw = (resolution + 1) // 2
        self.fc1 = nn.Linear(16 * self.down_hw * self.down_hw + 1, hidden)
        self.fc2 = nn.Linear(hidden, num_choices)
        nn.init.normal_(self.fc2.weight, std=0.01)
        nn.init.zeros_(self.fc2.bias)
        # A linear path from four shape descriptors straight to the outputs: size and outline
        # complexity decide most of the answer, and learning them through 785 mostly-noisy
        # inputs of fc1 was too slow (the switch stayed unsure and its argmax was one stage).
        self.prior = nn.Linear(len(self.DESCRIPTORS), num_choices)
        nn.init.zeros_(self.prior.weight)
        nn.init.zeros_(self.prior.bias)
        # λ, the price of compute (selection-cost units per full-path cost) at which the switch's
        # own choices met the budget target in training: a running mean over batches
        self.register_buffer("price", torch.zeros(()))
        self.register_buffer("price_updates", torch.zeros((), dtype=torch.int64))
        # Confidence-aware choice (1 for new heads; 0 for checkpoints from before, which choose as
        # they always did): at inference a detection's predicted costs are weighted by the
        # probability that it is a real object, read off ``score_map`` at its detector score —
        # a piecewise-linear map on SCORE_KNOTS, the identity until a held-out calibration
        # (dynamask calibrate) fits it.
        self.register_buffer("uses_score", torch.ones((), dtype=torch.uint8))
        self.register_buffer("score_map", self.SCORE_KNOTS.clone())

    #: detector scores at which ``score_map`` holds P(real object)
    SCORE_KNOTS = torch.linspace(0.0, 1.0, 11)

    DESCRIPTORS = ("log2 box side", "its square", "log outline complexity", "mean edge probability")

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Checkpoints from before the descriptor path load as they were: a zero path adds nothing.
        for name, param in (("weight", self.prior.weight), ("bias", self.prior.bias)):
            state_dict.setdefault(f"{prefix}prior.{name}", torch.zeros_like(param))
        # ... and from before the confidence-aware choice: they ignore the detector's score
        state_dict.setdefault(f"{prefix}uses_score", torch.zeros((), dtype=torch.uint8))
        state_dict.setdefault(f"{prefix}score_map", self.SCORE_KNOTS.clone())
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def real_probability(self, detection_scores: Tensor) -> Tensor:
        """P(a detection is a real object) from its detector score: ``score_map`` interpolated
        linearly between the knots (monotone when calibrated), N."""
        s = detection_scores.float().clamp(0.0, 1.0)
        knots = self.score_map.to(device=s.device, dtype=s.dtype)
        position = s * (knots.numel() - 1)
        low = position.floor().clamp(max=knots.numel() - 2).long()
        t = position - low.to(s.dtype)
        return knots[low] * (1 - t) + knots[low + 1] * t

    def update_price(self, lam: float) -> None:
        with torch.no_grad():
            if int(self.price_updates) == 0:
                self.price.fill_(lam)
            else:
                self.price.mul_(0.98).add_(0.02 * lam)
            self.price_updates.add_(1)

    @staticmethod
    def box_size_feature(boxes: Tensor) -> Tensor:
        """log2 of the box's side in input pixels, centred at 64 px: N×1."""
        wh = (boxes[:, 2:] - boxes[:, :2]).clamp(min=1.0)
        return (0.5 * torch.log2(wh[:, 0] * wh[:, 1]) - 6.0).unsqueeze(1)

    @staticmethod
    def shape_descriptors(mask_prob: Tensor, edge_prob: Tensor, size: Tensor) -> Tensor:
        """N×4: size, size², log(perimeter²/(4π·area)) of the stage-0 mask (1 for a disc, large
        for spiky or thin outlines; perimeter = summed gradient magnitude), mean edge probability."""
        p = mask_prob[:, 0]
        gy = F.pad(p[:, 1:, :] - p[:, :-1, :], (0, 0, 0, 1))
        gx = F.pad(p[:, :, 1:] - p[:, :, :-1], (0, 1, 0, 0))
        perimeter = (gx.square() + gy.square() + 1e-8).sqrt().sum(dim=(1, 2))
        area = p.sum(dim=(1, 2))
        complexity = perimeter.square() / (4 * torch.pi * area + 1.0)
        return torch.cat(
            [size, size.square(), complexity.clamp(min=1e-3).log()[:, None], edge_prob.mean(dim=(1, 2, 3))[:, None]],
            dim=1,
        )

    def forward(self, inp: SwitchInput) -> Tensor:
        """N×num_choices predicted selection costs (one per resolution, coarse to fine)."""
        region = inp.region.detach()
        mask_prob, edge_prob = inp.mask_logits.detach().sigmoid(), inp.edge_logits.detach().sigmoid()
        size = self.box_size_feature(inp.boxes.detach()).to(region.dtype)
        x = torch.cat([region, mask_prob, edge_prob], dim=1)
        x = F.relu(self.reduce(x))
        x = F.relu(self.down(x)).flatten(1)
        x = torch.cat([x, size], dim=1)
        return self.fc2(F.relu(self.fc1(x))) + self.prior(self.shape_descriptors(mask_prob, edge_prob, size))

    def scores(self, outputs: Tensor, cost_fractions: Tensor, detection_scores: Tensor | None = None) -> Tensor:
        """Higher is better: −(p·predicted cost + λ·F_k/F_max), N×K, with p the probability that the
        RoI is a real object (:meth:`real_probability` of its detector score) when the switch
        uses scores and they are given, else 1. A detection unlikely to be an object gains little
        from a finer mask, so as p → 0 it stops at the cheapest stage whatever λ > 0 is."""
        fractions = cost_fractions.to(device=outputs.device, dtype=outputs.dtype)
        if detection_scores is not None:  # tensor ops only, so that an exported model keeps the rule
            p = self.real_probability(detection_scores).to(outputs.dtype)
            outputs = torch.where(self.uses_score.bool(), p, torch.ones_like(p))[:, None] * outputs
        return -(outputs + self.price.to(outputs.dtype) * fractions)

    def flops(self) -> int:
        r = self.resolution
        return (
            conv2d_flops(self.reduce, (r, r))
            + conv2d_flops(self.down, (self.down_hw, self.down_hw))
            + linear_flops(self.fc1)
            + linear_flops(self.fc2)
            + linear_flops(self.prior)
        )


class PaperSwitch(nn.Module):
    """The authors' Mask Switch Module: detached RoIAlign 56×56 of P2 → 1×1 conv (FPN width → 128)
    + BN + ReLU + max-pool → 3×3 conv 128 → 16 + BN + ReLU + max-pool → FC 3136 → 512 → FC 4.
    Outputs logits over the resolutions; the choice is their argmax."""

    kind = "paper"

    def __init__(
        self, in_channels: int, num_choices: int = 4, level: str = "0", resolution: int = 56, sampling_ratio: int = 2
    ):
        super().__init__()
        self.in_channels = in_channels
        self.level = level
        self.resolution = resolution
        self.sampling_ratio = sampling_ratio
        self.conv1 = nn.Conv2d(in_channels, 128, 1)
        self.bn1 = nn.BatchNorm2d(128)
        self.conv2 = nn.Conv2d(128, 16, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(16)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        self.pooled_hw = (resolution + 1) // 2
        self.out_hw = (self.pooled_hw + 1) // 2
        self.fc1 = nn.Linear(16 * self.out_hw * self.out_hw, 512)
        self.fc2 = nn.Linear(512, num_choices)

    def forward(self, inp: SwitchInput) -> Tensor:
        """N×num_choices logits (one per resolution, coarse to fine)."""
        feature = inp.features[self.level].detach()
        r = self.resolution
        x = roi_align(
            feature,
            inp.rois.detach().to(feature.dtype),
            (r, r),
            spatial_scale=level_scale(feature, inp.image_shapes),
            sampling_ratio=self.sampling_ratio,
            aligned=True,
        )
        x = self.pool(F.relu(self.bn1(self.conv1(x))))
        x = self.pool(F.relu(self.bn2(self.conv2(x))))
        return self.fc2(F.relu(self.fc1(x.flatten(1))))

    @staticmethod
    def scores(outputs: Tensor, cost_fractions: Tensor | None = None, detection_scores: Tensor | None = None) -> Tensor:
        """Higher is better: the log-probabilities, N×K (neither the cost nor the detector's score
        plays a part: the authors' design, kept for reproduction)."""
        return torch.log_softmax(outputs.float(), dim=1)

    def flops(self) -> int:
        r, h = self.resolution, self.pooled_hw
        return (
            roi_align_flops(self.in_channels, (r, r), self.sampling_ratio)
            + conv2d_flops(self.conv1, (r, r))
            + conv2d_flops(self.conv2, (h, h))
            + linear_flops(self.fc1)
            + linear_flops(self.fc2)
        )
