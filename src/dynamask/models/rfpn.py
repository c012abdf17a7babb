"""Region-level FPN (r-FPN): the parts of one coarse-to-fine step of the mask pyramid.

A stage at resolution R predicts mask and edge logits from its region feature
(:class:`StagePredictor`). If the RoI goes on to the next resolution, the feature
aggregation module (:class:`FeatureAggregation`) fuses the region feature with the
image-level FPN feature pooled at the same resolution and with the stage's own mask and edge
probabilities, aligns them with a deformable conv, and upsamples ×2 into the next stage's
region feature. Every method returns its FLOPs per RoI from layer shapes (see ``flops.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import DeformConv2d

from .deform_conv import DEFORM_KERNELS, deform_conv2d
from .flops import conv2d_flops, deform_conv2d_flops, roi_align_flops

FAM_KINDS = ("deform", "conv")


def init_conv(conv: nn.Conv2d) -> nn.Conv2d:
    """Kaiming (fan-out, ReLU) weights and zero bias, in place; shared by every conv of the
    DynaMask head (here and in dynamask_head.py) so all stages start alike."""
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    return conv


class StagePredictor(nn.Module):
    """Mask and edge logits at one resolution.

    ``refine`` adds a 3×3 conv before the 1×1 predictor; later stages use it to turn the
    bilinearly upsampled feature into a sharper one at their own resolution. Mask logits are
    class-specific when ``num_mask_channels`` > 1 (the RoI's class channel is taken), the edge
    logit is class-agnostic. One 1×1 conv produces both.
    """

    def __init__(self, in_channels: int, num_mask_channels: int, refine: bool):
        super().__init__()
        self.num_mask_channels = num_mask_channels
        self.refine = init_conv(nn.Conv2d(in_channels, in_channels, 3, padding=1)) if refine else None
        self.logits = nn.Conv2d(in_channels, num_mask_channels + 1, 1)
        nn.init.normal_(self.logits.weight, std=0.001)
        nn.init.zeros_(self.logits.bias)

    def forward(self, x: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Returns (feature, mask logits N×1×R×R of the RoI's class, edge logits N×1×R×R)."""
        if self.refine is not None:
            x = F.relu(self.refine(x))
        out = self.logits(x)
        k = self.num_mask_channels
        if k == 1:
            mask = out[:, :1]
        else:
            index = torch.arange(out.shape[0], device=out.device)
            mask = out[index, labels.clamp(0, k - 1)].unsqueeze(1)
        return x, mask, out[:, k:]

    def flops(self, resolution: int) -> int:
        hw = (resolution, resolution)
        total = conv2d_flops(self.logits, hw)
        if self.refine is not None:
            total += conv2d_flops(self.refine, hw)
        return total


class FeatureAggregation(nn.Module):
    """FAM: region feature + pooled image feature + own mask/edge → next, twice finer feature.

    The 1×1 ``reduce`` of the image-level feature is linear and its bias is added separately,
    so it commutes exactly with RoIAlign: inference pools the FPN level and then reduces, per
    RoI (cost per instance, and nothing for RoIs that stopped earlier); training reduces the
    whole map first and pools the few reduced channels, because on a CPU the backward of
    RoIAlign over 256 channels dominates the step. ``kind="deform"`` aligns with a 3×3
    deformable conv whose offsets are predicted from the fused input (zero-initialised, so it
    starts as a plain conv); ``kind="conv"`` uses a plain 3×3 conv.

    ``deform_kernel`` chooses who computes the deformable conv — ``"auto"`` (torchvision's op on
    CUDA, the gather-and-GEMM form of ``deform_conv.py`` elsewhere), ``"gather"`` or
    ``"torchvision"``; the weights (a ``DeformConv2d``'s) and the FLOPs table are the same either way.
    """

    def __init__(
        self,
        in_channels: int,
        image_channels: int,
        reduced_channels: int,
        out_channels: int,
        kind: str = "deform",
        sampling_ratio: int = 2,
        deform_kernel: str = "auto",
    ):
        super().__init__()
        if kind not in FAM_KINDS:
            raise ValueError(f"fam must be one of {FAM_KINDS}, got {kind!r}")
        if deform_kernel not in DEFORM_KERNELS:
            raise ValueError(f"deform_kernel must be one of {DEFORM_KERNELS}, got {deform_kernel!r}")
        self.kind = kind
        self.deform_kernel = deform_kernel
        self.image_channels = image_channels
        self.sampling_ratio = sampling_ratio
        self.reduce = init_conv(nn.Conv2d(image_channels, reduced_channels, 1, bias=False))
        self.reduce_bias = nn.Parameter(torch.zeros(reduced_channels))
        self.fuse = init_conv(nn.Conv2d(in_channels + reduced_channels + 2, in_channels, 1))
        if kind == "deform":
            self.offset = nn.Conv2d(in_channels, 2 * 3 * 3, 3, padding=1)
            nn.init.zeros_(self.offset.weight)
            nn.init.zeros_(self.offset.bias)
            self.align = DeformConv2d(in_channels, in_channels, 3, padding=1)
            nn.init.kaiming_normal_(self.align.weight, mode="fan_out", nonlinearity="relu")
        else:
            self.offset = None
            self.align = init_conv(nn.Conv2d(in_channels, in_channels, 3, padding=1))
        self.project = init_conv(nn.Conv2d(in_channels, out_channels, 1))

    def reduce_image_feature(self, feature: Tensor) -> Tensor:
        """The linear part of the reduction (no bias): apply to a whole map or to pooled RoIs."""
        return self.reduce(feature)

    def forward(
        self,
        region: Tensor,
        pooled_image: Tensor,
        mask_logits: Tensor,
        edge_logits: Tensor,
        image_reduced: bool = False,
    ) -> Tensor:
        """``pooled_image`` is the RoIAligned FPN feature, either with all channels or, when
        ``image_reduced``, already passed through :meth:`reduce_image_feature`."""
        reduced = pooled_image if image_reduced else self.reduce(pooled_image)
        reduced = F.relu(reduced + self.reduce_bias.view(1, -1, 1, 1).to(reduced.dtype))
        x = torch.cat([region, reduced, mask_logits.sigmoid(), edge_logits.sigmoid()], dim=1)
        x = F.relu(self.fuse(x))
        if self.offset is not None:
            a = self.align
            x = F.relu(
                deform_conv2d(
                    x,
                    self.offset(x),
                    a.weight,
                    a.bias,
                    stride=a.stride,
                    padding=a.padding,
                    dilation=a.dilation,
                    kernel=self.deform_kernel,
                )
            )
        else:
            x = F.relu(self.align(x))
        x = F.relu(self.project(x))
        return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)

    def flops(self, resolution: int) -> int:
        """Per RoI: pooling the image feature, the convs; upsampling is not counted."""
        hw = (resolution, resolution)
        total = roi_align_flops(self.image_channels, hw, self.sampling_ratio)
        total += conv2d_flops(self.reduce, hw) + conv2d_flops(self.fuse, hw)
        if self.offset is not None:
            total += conv2d_flops(self.offset, hw)
            total += deform_conv2d_flops(self.align, self.align.weight.shape[1], hw)
        else:
            total += conv2d_flops(self.align, hw)
        return total + conv2d_flops(self.project, hw)
