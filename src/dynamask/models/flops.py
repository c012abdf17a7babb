"""FLOPs of the mask branch, from layer shapes, and a counter that measures them.

Why both: the per-instance ``mask_flops`` that the model reports and the budget loss uses come
from formulas over layer shapes (cheap, known before running anything). ``count_flops`` runs
code under ``torch.utils.flop_counter.FlopCounterMode`` extended with formulas for the two
torchvision ops it does not know (``roi_align`` and ``deform_conv2d``), with the sampling of the
gather deformable conv (``embedding_bag``) and with bilinear ``grid_sample`` (the point stages'
reads), so tests can check the formulas against what was really executed.

Convention (same as FlopCounterMode): one multiply-add = 2 FLOPs; convolutions, transposed
convolutions, linear layers, RoIAlign, deformable convolution and grid_sample are counted; elementwise ops
(activations, sigmoid, bilinear upsampling of feature maps) are not.
"""

from __future__ import annotations

from collections.abc import Callable
from math import prod

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

# A bilinear sample reads 4 neighbours: 4 multiply-adds.
BILINEAR_SAMPLE_FLOPS = 8


def conv2d_flops(conv: nn.Conv2d, out_hw: tuple[int, int]) -> int:
    """FLOPs of one conv (or DeformConv2d's convolution part) for one item producing ``out_hw``."""
    c_out, c_in_per_group, kh, kw = conv.weight.shape
    return 2 * c_out * c_in_per_group * kh * kw * out_hw[0] * out_hw[1]


def conv_transpose2d_flops(conv: nn.ConvTranspose2d, in_hw: tuple[int, int]) -> int:
    c_in, c_out_per_group, kh, kw = conv.weight.shape
    return 2 * c_in * c_out_per_group * kh * kw * in_hw[0] * in_hw[1]


def linear_flops(linear: nn.Linear) -> int:
    return 2 * linear.in_features * linear.out_features


def roi_align_flops(channels: int, out_hw: tuple[int, int], sampling_ratio: int) -> int:
    """RoIAlign for one RoI: every output bin averages sampling_ratio² bilinear samples."""
    samples = max(sampling_ratio, 1) ** 2
    return channels * out_hw[0] * out_hw[1] * samples * BILINEAR_SAMPLE_FLOPS


def deform_conv2d_flops(conv: nn.Module, in_channels: int, out_hw: tuple[int, int]) -> int:
    """Deformable conv for one item: the convolution plus one bilinear sample per input tap."""
    kh, kw = conv.weight.shape[-2:]
    sampling = in_channels * kh * kw * out_hw[0] * out_hw[1] * BILINEAR_SAMPLE_FLOPS
    return conv2d_flops(conv, out_hw) + sampling


# --- formulas for FlopCounterMode (arguments arrive as shapes) -----------------------------


def _roi_align_formula(
    input_shape,
    rois_shape,
    spatial_scale,
    pooled_height,
    pooled_width,
    sampling_ratio,
    aligned,
    *args,
    out_shape=None,
    **kwargs,
) -> int:
    num_rois, channels = out_shape[0], out_shape[1]
    return num_rois * roi_align_flops(channels, (pooled_height, pooled_width), sampling_ratio)


def _deform_conv2d_formula(
    input_shape, weight_shape, offset_shape, mask_shape, bias_shape, *args, out_shape=None, **kwargs
) -> int:
    batch, c_out, h_out, w_out = out_shape
    c_in = input_shape[1]
    _, c_in_per_group, kh, kw = weight_shape
    conv = 2 * c_out * c_in_per_group * kh * kw * h_out * w_out
    sampling = c_in * kh * kw * h_out * w_out * BILINEAR_SAMPLE_FLOPS
    return batch * (conv + sampling)


def _grid_sampler_formula(input_shape, grid_shape, *args, out_shape=None, **kwargs) -> int:
    # Bilinear grid_sample (the point stages' reads, point_refine.py): every output value
    # (item, channel, point) is one bilinear sample.
    return prod(out_shape) * BILINEAR_SAMPLE_FLOPS


def _embedding_bag_formula(weight_shape, indices_shape, *args, **kwargs) -> int:
    # Each index adds one (weighted) row: one multiply-add per channel. The gather form of the
    # deformable conv (deform_conv.py) samples with it, 4 indices per tap — the table's
    # BILINEAR_SAMPLE_FLOPS per tap and channel.
    return 2 * prod(indices_shape) * weight_shape[-1]


def torchvision_flop_formulas() -> dict:
    """Formulas for torchvision ops (and the embedding-bag sampling of the gather deformable
    conv), to pass as FlopCounterMode(custom_mapping=...)."""
    # Importing torchvision.ops registers the operators under torch.ops.torchvision.
    import torchvision.ops  # noqa: F401

    return {
        torch.ops.torchvision.roi_align: _roi_align_formula,
        torch.ops.torchvision.deform_conv2d: _deform_conv2d_formula,
        torch.ops.aten._embedding_bag: _embedding_bag_formula,
        torch.ops.aten._embedding_bag_forward_only: _embedding_bag_formula,
        torch.ops.aten.grid_sampler_2d: _grid_sampler_formula,
    }


def count_flops(fn: Callable, *args, **kwargs) -> tuple[int, object]:
    """Run ``fn(*args, **kwargs)`` under FlopCounterMode; returns (total FLOPs, fn's result)."""
    with FlopCounterMode(display=False, custom_mapping=torchvision_flop_formulas()) as counter:
        result = fn(*args, **kwargs)
    return counter.get_total_flops(), result


def module_param_count(module: nn.Module) -> int:
    return sum(prod(p.shape) for p in module.parameters())
