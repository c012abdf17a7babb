"""The gather-and-GEMM deformable conv equals torchvision's deform_conv2d, forward and backward."""

import pytest
import torch
from torchvision.ops import deform_conv2d as tv_deform_conv2d

from dynamask.models import dynamask_resnet18_fpn
from dynamask.models.deform_conv import deform_conv2d, deform_conv2d_gather
from dynamask.models.flops import count_flops

CASES = [  # (N, C, Cout, H, W, stride, padding, dilation, offset scale)
    (2, 5, 4, 7, 9, 1, 1, 1, 0.0),  # zero offsets: the FAM's initial state, taps on integer positions
    (2, 5, 4, 7, 9, 1, 1, 1, 0.7),
    (1, 3, 6, 6, 6, 1, 1, 1, 4.0),  # many taps land off the map
    (3, 4, 2, 5, 8, 1, 1, 1, 12.0),  # nearly all taps off the map
    (2, 6, 3, 9, 9, 2, 0, 1, 0.5),
    (1, 4, 5, 8, 7, 1, 2, 2, 1.5),
    (2, 8, 8, 1, 1, 1, 1, 1, 0.3),  # 1×1 map
]


@pytest.mark.parametrize("case", CASES)
def test_gather_equals_torchvision_forward_and_gradients(case):
    n, c, c_out, h, w, stride, pad, dil, scale = case
    g = torch.Generator().manual_seed(hash(case) % 2**31)
    x = torch.randn(n, c, h, w, generator=g)
    weight = torch.randn(c_out, c, 3, 3, generator=g)
    bias = torch.randn(c_out, generator=g)
    ho = (h + 2 * pad - dil * 2 - 1) // stride + 1
    wo = (w + 2 * pad - dil * 2 - 1) // stride + 1
    offset = torch.randn(n, 18, ho, wo, generator=g) * scale
    grad_out = torch.randn(n, c_out, ho, wo, generator=g)
    results = []
    for fn in (tv_deform_conv2d, deform_conv2d_gather):
        leaves = [t.clone().requires_grad_() for t in (x, offset, weight, bias)]
        out = fn(leaves[0], leaves[1], leaves[2], leaves[3], stride=stride, padding=pad, dilation=dil)
        grads = torch.autograd.grad(out, leaves, grad_out)
        results.append((out, *grads))
    for ref, got, name in zip(results[0], results[1], ("output", "d input", "d offset", "d weight", "d bias")):
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5, msg=lambda m: f"{name}: {m}")  # noqa: B023 - called within this iteration


def test_without_bias_and_kernel_choice():
    x, offset, weight = torch.randn(1, 3, 5, 5), torch.randn(1, 18, 5, 5), torch.randn(2, 3, 3, 3)
    ref = tv_deform_conv2d(x, offset, weight, padding=1)
    torch.testing.assert_close(deform_conv2d(x, offset, weight, padding=1, kernel="gather"), ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(deform_conv2d(x, offset, weight, padding=1), ref, rtol=1e-4, atol=1e-5)  # auto on CPU
    with pytest.raises(ValueError, match="deform kernel"):
        deform_conv2d(x, offset, weight, padding=1, kernel="fast")
    with pytest.raises(ValueError, match="offset has"):
        deform_conv2d_gather(x, offset[:, :8], weight, padding=1)


def test_measured_flops_equal_torchvision_ops():
    x, offset, weight = torch.randn(2, 8, 10, 10), torch.randn(2, 18, 10, 10), torch.randn(6, 8, 3, 3)
    flops = {
        k: count_flops(deform_conv2d, x, offset, weight, padding=1, kernel=k)[0] for k in ("gather", "torchvision")
    }
    assert flops["gather"] == flops["torchvision"] > 0


def test_fam_kernels_give_the_same_masks_and_flops():
    torch.manual_seed(0)
    # 20 detections (not the default 100) through the 112x112 stages: every sampling path, a fifth of the cost
    model = dynamask_resnet18_fpn(
        3, fam="deform", min_size=96, max_size=96, policy="fixed-112", box_detections_per_img=20
    ).eval()
    head = model.mask_branch
    with torch.no_grad():  # move the offsets away from zero so that sampling is really fractional
        for fam in head.aggregators:
            fam.offset.bias.normal_(0, 0.8)
    assert head.deform_kernel == "auto"
    images = [torch.rand(3, 96, 96)]
    model.roi_heads.score_thresh = 0.0
    outs = {}
    for kernel in ("gather", "torchvision"):
        head.deform_kernel = kernel
        assert {fam.deform_kernel for fam in head.aggregators} == {kernel}
        with torch.no_grad():
            outs[kernel] = model(images)[0]
    assert outs["gather"]["masks"].shape[0] > 0
    torch.testing.assert_close(outs["gather"]["masks"], outs["torchvision"]["masks"], rtol=1e-4, atol=1e-4)
    assert torch.equal(outs["gather"]["mask_flops"], outs["torchvision"]["mask_flops"])
    with pytest.raises(ValueError, match="deform_kernel"):
        head.deform_kernel = "fast"


def test_chunked_batches_give_the_same_result_and_gradients(monkeypatch):
    import dynamask.models.deform_conv as dc

    g = torch.Generator().manual_seed(5)
    x = torch.randn(7, 4, 6, 6, generator=g)
    offset = torch.randn(7, 18, 6, 6, generator=g)
    weight = torch.randn(3, 4, 3, 3, generator=g)
    results = []
    for chunk_elements in (10**9, 4 * 9 * 36 * 2):  # one batch; chunks of 2 items (the last one 1)
        monkeypatch.setattr(dc, "CHUNK_ELEMENTS", chunk_elements)
        leaves = [t.clone().requires_grad_() for t in (x, offset, weight)]
        out = dc.deform_conv2d_gather(*leaves, padding=1)
        results.append((out, *torch.autograd.grad(out.square().sum(), leaves)))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
