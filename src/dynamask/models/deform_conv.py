"""Deformable 3×3 convolution (DCNv1) as bilinear gathers plus one matrix multiply.

Why: ``torchvision.ops.deform_conv2d`` has no fast CPU kernel (about 10× a plain conv of the same
shape on a 2-core CPU) and does not export to ONNX. Written as "sample the K kernel taps of every
output position, then multiply by the weight" (im2col with fractional positions), the same
operator runs on the CPU's fast paths (row gathers over channels-last features, one GEMM) and
consists of ordinary tensor ops that every exporter knows.

The arithmetic follows torchvision's kernel exactly, so the two are interchangeable for the same
weights: a tap at (y, x) is the bilinear mix of its four integer neighbours, those outside the map
read as 0 (so a tap at y ≤ −1 or y ≥ H reads 0, as torchvision's explicit check gives); the neighbours are found
with ``floor`` of the position, so at integer positions (zero offsets, the FAM's initial state)
the gradient with respect to the offsets is the forward difference, as in torchvision.

:func:`deform_conv2d` picks the kernel: torchvision's on CUDA (it is fast there), this one
elsewhere; ``kernel="gather"`` / ``"torchvision"`` forces either.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .roi_utils import exporting

DEFORM_KERNELS = ("auto", "gather", "torchvision")

# Items are processed in chunks of about this many sampled values (taps × channels), so that the
# sampled columns stay in cache; measured on a 2-core CPU, 2–3× faster than one big batch.
CHUNK_ELEMENTS = 3_000_000


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def deform_conv2d_gather(
    input: Tensor, offset: Tensor, weight: Tensor, bias: Tensor | None = None, stride=1, padding=0, dilation=1
) -> Tensor:
    """DCNv1 (one offset group, one weight group) with torchvision's ``deform_conv2d`` semantics.

    ``input`` N×C×H×W, ``offset`` N×2K×Ho×Wo (for kernel tap k = i·kw + j: channel 2k is the
    y offset, 2k+1 the x offset), ``weight`` Cout×C×kh×kw; returns N×Cout×Ho×Wo.
    """
    per_item = offset.shape[1] // 2 * offset.shape[-2] * offset.shape[-1] * input.shape[1]
    chunk = max(1, CHUNK_ELEMENTS // max(per_item, 1))
    if exporting() or torch.jit.is_scripting() or input.shape[0] <= chunk:
        return _deform_conv2d_gather(input, offset, weight, bias, stride, padding, dilation)
    return torch.cat(
        [
            _deform_conv2d_gather(input[i : i + chunk], offset[i : i + chunk], weight, bias, stride, padding, dilation)
            for i in range(0, input.shape[0], chunk)
        ]
    )


def _deform_conv2d_gather(
    input: Tensor, offset: Tensor, weight: Tensor, bias: Tensor | None, stride, padding, dilation
) -> Tensor:
    n, c, h, w = input.shape
    c_out, c_in, kh, kw = weight.shape
    if c_in != c:
        raise ValueError(
            f"deform_conv2d_gather: weight expects {c_in} input channels, input has {c} "
            f"(grouped convolution is not supported)"
        )
    k = kh * kw
    ho, wo = offset.shape[-2:]
    if offset.shape[1] != 2 * k:
        raise ValueError(
            f"deform_conv2d_gather: offset has {offset.shape[1]} channels, expected {2 * k} "
            f"(one offset group of a {kh}×{kw} kernel)"
        )
    sh, sw = _pair(stride)
    ph, pw = _pair(padding)
    dh, dw = _pair(dilation)
    dtype, device = input.dtype, input.device
    # Tap positions without offsets: integers held exactly in floating point, shape K×Ho×Wo.
    ki = torch.arange(kh, device=device, dtype=dtype).repeat_interleave(kw) * dh
    kj = torch.arange(kw, device=device, dtype=dtype).repeat(kh) * dw
    oy = torch.arange(ho, device=device, dtype=dtype) * sh - ph
    ox = torch.arange(wo, device=device, dtype=dtype) * sw - pw
    off = offset.view(n, k, 2, ho, wo)
    y = ki.view(1, k, 1, 1) + oy.view(1, 1, ho, 1) + off[:, :, 0]
    x = kj.view(1, k, 1, 1) + ox.view(1, 1, 1, wo) + off[:, :, 1]
    # Order taps as N×Ho×Wo×K, so the gathered rows reshape straight into GEMM rows (N·Ho·Wo)×(K·C).
    y = y.permute(0, 2, 3, 1)
    x = x.permute(0, 2, 3, 1)
    y0 = torch.floor(y)
    x0 = torch.floor(x)
    ly = y - y0
    lx = x - x0
    y0 = y0.long()
    x0 = x0.long()
    rows = input.permute(0, 2, 3, 1).reshape(n * h * w, c)  # channels last: one row per pixel
    base = (torch.arange(n, device=device) * (h * w)).view(n, 1, 1, 1, 1)
    # The four neighbours of every tap, last dimension: (y0, x0), (y0, x1), (y1, x0), (y1, x1).
    yc = torch.stack((y0, y0, y0 + 1, y0 + 1), dim=-1)
    xc = torch.stack((x0, x0 + 1, x0, x0 + 1), dim=-1)
    wy = torch.stack((1 - ly, 1 - ly, ly, ly), dim=-1)
    wx = torch.stack((1 - lx, lx, 1 - lx, lx), dim=-1)
    valid = (yc >= 0) & (yc < h) & (xc >= 0) & (xc < w)
    index = (base + yc.clamp(0, h - 1) * w + xc.clamp(0, w - 1)).reshape(-1, 4)
    corner_weight = (wy * wx * valid.to(dtype)).reshape(-1, 4)
    if torch.onnx.is_in_onnx_export():
        # ONNX has no EmbeddingBag: four row gathers, weighted and summed.
        sampled = sum(rows.index_select(0, index[:, j]) * corner_weight[:, j : j + 1] for j in range(4))
    else:
        # One fused kernel: gather the four rows of each tap and sum them with their weights.
        sampled = F.embedding_bag(index, rows, per_sample_weights=corner_weight, mode="sum")
    cols = sampled.view(n * ho * wo, k * c)
    w2 = weight.permute(0, 2, 3, 1).reshape(c_out, k * c)  # column order (tap, channel) as in cols
    out = cols @ w2.t() if bias is None else torch.addmm(bias, cols, w2.t())
    return out.view(n, ho, wo, c_out).permute(0, 3, 1, 2).contiguous()


def deform_conv2d(
    input: Tensor,
    offset: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride=1,
    padding=0,
    dilation=1,
    kernel: str = "auto",
) -> Tensor:
    """Deformable convolution with the kernel chosen by device (``"auto"``) or forced."""
    if kernel not in DEFORM_KERNELS:
        raise ValueError(f"deform kernel must be one of {DEFORM_KERNELS}, got {kernel!r}")
    if kernel == "torchvision" or (kernel == "auto" and input.is_cuda):
        from torchvision.ops import deform_conv2d as tv_deform_conv2d

        return tv_deform_conv2d(input, offset, weight, bias, stride=stride, padding=padding, dilation=dilation)
    return deform_conv2d_gather(input, offset, weight, bias, stride=stride, padding=padding, dilation=dilation)
