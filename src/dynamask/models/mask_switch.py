"""Mask Switch Module (MSM): picks, per RoI, the resolution at which its mask may stop.

It must cost next to nothing against the stages it saves, so it reads what stage 0 has already
computed for every RoI — the 14×14 region feature and the 14×14 mask and edge probabilities
(a direct view of how complicated the outline is) — plus the box size (small objects gain
nothing from 112×112). All inputs are detached by the caller: the switch learns from the
selection and budget losses only and never pulls on the mask head's features.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .flops import conv2d_flops, linear_flops


class MaskSwitch(nn.Module):
    def __init__(self, in_channels: int, num_choices: int = 4, resolution: int = 14,
                 reduced_channels: int = 32, hidden: int = 64):
        super().__init__()
        self.resolution = resolution
        self.reduce = nn.Conv2d(in_channels + 2, reduced_channels, 1)
        self.down = nn.Conv2d(reduced_channels, 16, 3, stride=2, padding=1)
        self.down_hw = (resolution + 1) // 2
        self.fc1 = nn.Linear(16 * self.down_hw * self.down_hw + 1, hidden)
        self.fc2 = nn.Linear(hidden, num_choices)
        nn.init.normal_(self.fc2.weight, std=0.01)
        nn.init.zeros_(self.fc2.bias)
        # A linear path from four shape descriptors straight to the logits: size and outline
        # complexity decide most of the answer, and learning them through 785 mostly-noisy
        # inputs of fc1 was too slow (the switch stayed unsure and its argmax was one stage).
        self.prior = nn.Linear(len(self.DESCRIPTORS), num_choices)
        nn.init.zeros_(self.prior.weight)
        nn.init.zeros_(self.prior.bias)

    DESCRIPTORS = ("log2 box side", "its square", "log outline complexity", "mean edge probability")

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Checkpoints from before the descriptor path load as they were: a zero path adds nothing.
        for name, param in (("weight", self.prior.weight), ("bias", self.prior.bias)):
            state_dict.setdefault(f"{prefix}prior.{name}", torch.zeros_like(param))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

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
        return torch.cat([size, size.square(), complexity.clamp(min=1e-3).log()[:, None],
                          edge_prob.mean(dim=(1, 2, 3))[:, None]], dim=1)

    def forward(self, region: Tensor, mask_logits: Tensor, edge_logits: Tensor,
                boxes: Tensor) -> Tensor:
        """Returns N×num_choices logits (one per resolution, coarse to fine)."""
        mask_prob, edge_prob = mask_logits.sigmoid(), edge_logits.sigmoid()
        size = self.box_size_feature(boxes).to(region.dtype)
        x = torch.cat([region, mask_prob, edge_prob], dim=1)
        x = F.relu(self.reduce(x))
        x = F.relu(self.down(x)).flatten(1)
        x = torch.cat([x, size], dim=1)
        return self.fc2(F.relu(self.fc1(x))) + self.prior(self.shape_descriptors(mask_prob, edge_prob, size))

    def flops(self) -> int:
        r = self.resolution
        return (conv2d_flops(self.reduce, (r, r)) + conv2d_flops(self.down, (self.down_hw, self.down_hw))
                + linear_flops(self.fc1) + linear_flops(self.fc2) + linear_flops(self.prior))
