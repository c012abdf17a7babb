"""Tests for the batched mask paste (dynamask.models.paste)."""

import pytest
import torch
import torch.nn.functional as F
from torchvision.models.detection.roi_heads import paste_masks_in_image

import dynamask.models.paste as paste_mod
from dynamask.models.paste import paste_masks, paste_masks_grouped

H, W = 240, 320
RESOLUTIONS = (14, 28, 56, 112)


@pytest.fixture(autouse=True)
def _single_thread():
    # These kernels are tiny; on a busy 2-core CI box intra-op threads spin on
    # each other and make them 10-40x slower, so run single-threaded.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _blob_masks(n, m, gen):
    """Smooth soft blobs: a centred bump deformed by upsampled low-res noise."""
    noise = torch.randn(n, 1, 3, 3, generator=gen)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, m), torch.linspace(-1, 1, m), indexing="ij")
    bump = 1.5 * (1 - (xx**2 + yy**2))
    field = F.interpolate(noise, size=(m, m), mode="bicubic", align_corners=False) * 0.6 + bump
    return torch.sigmoid(4 * field)


def _noise_masks(n, m, gen):
    """Rougher shapes (low-res noise upsampled), incl. several components."""
    noise = torch.randn(n, 1, 5, 5, generator=gen) + 0.3
    return torch.sigmoid(6 * F.interpolate(noise, size=(m, m), mode="bilinear", align_corners=False))


def _boxes(n, lo, hi, gen, h=H, w=W):
    """Centres inside the image (torchvision needs overlap); boxes may stick out."""
    wh = torch.rand(n, 2, generator=gen) * (hi - lo) + lo
    c = torch.rand(n, 2, generator=gen) * torch.tensor([float(w), float(h)])
    return torch.cat([c - wh / 2, c + wh / 2], dim=1)


def _iou(a, b):
    a, b = a.flatten(1), b.flatten(1)
    inter = (a & b).sum(1).float()
    union = (a | b).sum(1).float()
    return inter, union


def _max_border_dist_ok(a, b, k):
    """Every pixel set in one mask is within k px (Chebyshev) of the other."""
    dil = lambda x: F.max_pool2d(x.float(), 2 * k + 1, 1, k) > 0  # noqa: E731
    return not bool(((a & ~dil(b)) | (b & ~dil(a))).any())


@pytest.mark.parametrize("m", RESOLUTIONS)
def test_agreement_with_torchvision(m):
    gen = torch.Generator().manual_seed(100 + m)
    masks = torch.cat([_blob_masks(16, m, gen), _noise_masks(8, m, gen)])
    # large / small / medium boxes; centres inside, many sticking out of the image
    boxes = torch.cat([_boxes(8, 256, 400, gen), _boxes(8, 12, 60, gen), _boxes(8, 60, 200, gen)])
    large = torch.arange(len(boxes)) < 8  # blob masks in 256-400 px boxes
    ref = paste_masks_in_image(masks, boxes, (H, W), padding=1)
    b = ref >= 0.5

    # geometry="torchvision": same geometry, so every instance agrees (IoU >= 0.98)
    # and the probabilities agree up to float rounding
    compat = paste_masks(masks, boxes, (H, W), geometry="torchvision")
    assert compat.shape == ref.shape == (len(boxes), 1, H, W)
    inter, union = _iou(compat >= 0.5, b)
    nonempty = union > 0
    assert (~nonempty).sum() <= 2
    assert (inter[nonempty] / union[nonempty]).min() >= 0.98
    assert (compat - ref).abs().max() < 1e-4

    # exact-box convention (geometry="exact"): torchvision's legacy geometry (1-cell
    # padding, integer truncation, +1 width) makes its masks ~1 px larger per
    # side, so borders differ by a few px at most; that is IoU >= 0.98 for the
    # large blobs only (small boxes go down to ~0.8)
    a = paste_masks(masks, boxes, (H, W), geometry="exact") >= 0.5
    assert _max_border_dist_ok(a, b, 3)
    inter, union = _iou(a, b)
    nonempty = union > 0
    assert (~nonempty).sum() <= 2
    assert (inter[large] / union[large]).min() >= 0.98
    assert (inter[nonempty] / union[nonempty]).min() >= 0.7


def test_exact_box_convention():
    # with geometry="exact" a full mask covers exactly the pixels whose centre lies inside the box
    masks = torch.ones(3, 28, 28)
    boxes = torch.tensor([[10.0, 20.0, 50.0, 60.0], [10.3, 20.3, 50.3, 60.3], [10.7, 20.7, 50.7, 60.7]])
    out = paste_masks(masks, boxes, (100, 100), geometry="exact")[:, 0] >= 0.5
    for i, (x0, y0) in enumerate([(10, 20), (10, 20), (11, 21)]):
        cols = out[i].any(0).nonzero().flatten()
        rows = out[i].any(1).nonzero().flatten()
        assert (cols.min().item(), cols.max().item()) == (x0, x0 + 39)
        assert (rows.min().item(), rows.max().item()) == (y0, y0 + 39)


def _mixed_case(gen, n=30, m=28):
    masks = _noise_masks(n, m, gen)
    boxes = torch.cat(
        [
            _boxes(n - 6, 2, 300, gen),
            torch.tensor(
                [
                    [-80.0, -50.0, -10.0, -5.0],  # fully outside (top-left)
                    [W + 5.0, 10.0, W + 90.0, 70.0],  # fully outside (right)
                    [-30.0, -30.0, W + 30.0, H + 30.0],  # larger than the image
                    [50.0, 60.0, 50.0, 60.0],  # degenerate point
                    [100.0, 10.0, 100.0, 90.0],  # zero width
                    [5.0, 5.0, 5.4, 5.3],  # sub-pixel
                ]
            ),
        ]
    )
    return masks, boxes


@pytest.mark.parametrize("bucketing", ["pair", "maxside"])
@pytest.mark.parametrize("compat", [False, True])
def test_cropped_path_identical_to_full_image_sampling(monkeypatch, bucketing, compat):
    gen = torch.Generator().manual_seed(7)
    masks, boxes = _mixed_case(gen)
    monkeypatch.setattr(paste_mod, "_BUCKETING", bucketing)
    fast = paste_masks(masks, boxes, (H, W), geometry="torchvision" if compat else "exact")
    if compat:
        masks, boxes = paste_mod._torchvision_geometry(masks, boxes)
    ref = torch.zeros(len(boxes), 1, H, W)
    paste_mod._paste_full(ref, torch.arange(len(boxes)), masks, boxes, H, W, 2**26)
    assert torch.equal(fast, ref)


def test_chunking_identical():
    gen = torch.Generator().manual_seed(8)
    masks, boxes = _mixed_case(gen)
    ref = paste_masks(masks, boxes, (H, W), geometry="exact")
    for chunk in (1, 5000, 3 * H * W):
        assert torch.equal(paste_masks(masks, boxes, (H, W), chunk_pixels=chunk, geometry="exact"), ref)
    full_small = torch.zeros_like(ref)
    paste_mod._paste_full(full_small, torch.arange(len(boxes)), masks, boxes, H, W, 1)
    assert torch.equal(full_small, ref)


def test_grouped_matches_per_group_in_order():
    gen = torch.Generator().manual_seed(9)
    n = 23
    boxes = _boxes(n, 10, 200, gen)
    perm = torch.randperm(n, generator=gen)
    splits = [perm[:5], perm[5:11], perm[11:20], perm[20:]]
    groups = [(idx, _noise_masks(len(idx), r, gen)) for idx, r in zip(splits, RESOLUTIONS)]
    out = paste_masks_grouped(groups, boxes, (H, W))
    assert out.shape == (n, 1, H, W)
    for idx, masks in groups:
        assert torch.equal(out[idx], paste_masks(masks, boxes[idx], (H, W)))
    # an empty group and a missing instance are fine (the latter stays zero)
    groups2 = [(torch.zeros(0, dtype=torch.long), torch.zeros(0, 1, 56, 56))] + groups[:3]
    out2 = paste_masks_grouped(groups2, boxes, (H, W))
    assert torch.equal(out2[perm[:20]], out[perm[:20]])
    assert not out2[perm[20:]].any()


def test_empty_inputs():
    out = paste_masks(torch.zeros(0, 1, 28, 28), torch.zeros(0, 4), (H, W))
    assert out.shape == (0, 1, H, W) and out.dtype == torch.float32
    out = paste_masks(torch.zeros(0, 28, 28, dtype=torch.float16), torch.zeros(0, 4), (H, W))
    assert out.shape == (0, 1, H, W) and out.dtype == torch.float16
    assert paste_masks_grouped([], torch.zeros(0, 4), (H, W)).shape == (0, 1, H, W)
    g = [(torch.zeros(0, dtype=torch.long), torch.zeros(0, 1, 14, 14))]
    assert paste_masks_grouped(g, torch.zeros(0, 4), (H, W)).shape == (0, 1, H, W)


def test_degenerate_and_outside_boxes():
    masks = torch.ones(5, 1, 14, 14)
    boxes = torch.tensor(
        [
            [50.0, 60.0, 50.0, 60.0],
            [50.2, 60.2, 50.2, 60.2],
            [100.0, 10.0, 100.0, 90.0],
            [-50.0, -50.0, -10.0, -10.0],
            [10.0, 10.0, 40.0, 40.0],
        ]
    )
    out = paste_masks(masks, boxes, (H, W), geometry="exact")
    assert torch.isfinite(out).all()
    assert out[:3].sum() <= 1.0  # at most one pixel touched by a point box
    assert not out[3].any()
    assert (out[4] >= 0.5).sum() == 30 * 30
    assert torch.isfinite(paste_masks(masks, boxes, (H, W), geometry="torchvision")).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_dtype_preserved(dtype):
    gen = torch.Generator().manual_seed(10)
    masks = _blob_masks(6, 28, gen)
    boxes = _boxes(6, 20, 150, gen)
    ref = paste_masks(masks, boxes, (H, W))
    out = paste_masks(masks.to(dtype), boxes.to(dtype), (H, W))
    assert out.dtype == dtype and out.shape == (6, 1, H, W)
    tol = {torch.float16: 2e-3, torch.bfloat16: 1e-2, torch.float64: 1e-6}[dtype]
    # bf16 boxes move the box by up to ~1 px; compare with the same boxes
    out_same_boxes = paste_masks(masks.to(dtype), boxes, (H, W))
    assert (out_same_boxes.float() - ref).abs().max() <= tol
    g = paste_masks_grouped([(torch.arange(6), masks.to(dtype))], boxes, (H, W))
    assert g.dtype == dtype


def test_three_dim_masks_and_validation():
    gen = torch.Generator().manual_seed(11)
    masks = _blob_masks(4, 14, gen)
    boxes = _boxes(4, 20, 80, gen)
    assert torch.equal(paste_masks(masks[:, 0], boxes, (H, W)), paste_masks(masks, boxes, (H, W)))
    with pytest.raises(ValueError):
        paste_masks(masks, boxes[:3], (H, W))
    with pytest.raises(ValueError):
        paste_masks(masks.expand(4, 2, 14, 14), boxes, (H, W))
