"""The model-free ceiling of point-sparse refinement (dynamask.evaluation.point_ceiling): its two ends are
the dense round trip and the plain upsampled chain, the points are the most uncertain cells, and a
thin part the 28 grid lost is recovered by a dense trip but not by a few points."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dynamask.data import make_shapes_tensors
from dynamask.evaluation.point_ceiling import (
    concat,
    point_ceiling,
    point_chain,
    refine_points,
    select_uncertain,
    upsample2x,
)
from dynamask.evaluation.round_trip import round_trip_iou, round_trip_masks
from dynamask.models.geometry import roi_mask_targets
from dynamask.models.paste import paste_masks

RESOLUTIONS = (28, 56, 112)


@pytest.fixture(scope="module")
def shapes():
    """Two detailed-shapes images at 160 px (thin legs, spokes, holes), their tight boxes."""
    _, targets = make_shapes_tensors(2, 160, seed=3, detail=True)
    return [(t["masks"], t["boxes"]) for t in targets]


def disc_with_spoke(size=256, cx=110, cy=128, radius=90, thickness=2, x_end=250):
    """A disc with a horizontal spoke ``thickness`` px thick: (1×H×W uint8 mask, its tight box, the
    spoke's pixels outside the disc as 1×H×W bool)."""
    yy, xx = np.mgrid[0:size, 0:size]
    disc = (xx + 0.5 - cx) ** 2 + (yy + 0.5 - cy) ** 2 <= radius * radius
    spoke = np.zeros_like(disc)
    spoke[cy - 1 : cy - 1 + thickness, cx:x_end] = True
    mask = disc | spoke
    ys, xs = np.nonzero(mask)
    box = torch.tensor([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], dtype=torch.float32)
    return torch.from_numpy(mask[None].astype(np.uint8)), box, torch.from_numpy((spoke & ~disc)[None])


def test_all_points_is_the_dense_round_trip(shapes):
    for masks, boxes in shapes:
        chain = point_chain(masks, boxes, 112 * 112)  # every cell, through the top-k path
        for r in RESOLUTIONS:
            assert torch.equal(chain.masks[r], round_trip_masks(masks, boxes, r)), r
            assert torch.equal(chain.maps[r], roi_mask_targets(masks, boxes, r))
        assert bool(chain.chosen[112].all()) and bool(chain.chosen[56].all())
        dense = point_chain(masks, boxes, None)
        assert all(torch.equal(dense.masks[r], chain.masks[r]) for r in RESOLUTIONS)


def test_no_points_is_the_plain_upsampled_chain(shapes):
    for masks, boxes in shapes:
        chain = point_chain(masks, boxes, 0)
        t28 = roi_mask_targets(masks, boxes, 28)
        up56 = F.interpolate(t28[:, None], size=(56, 56), mode="bilinear", align_corners=False)
        up112 = F.interpolate(up56, size=(112, 112), mode="bilinear", align_corners=False)
        for r, m in ((56, up56), (112, up112)):
            want = paste_masks(m, boxes, masks.shape[-2:])[:, 0] >= 0.5
            assert torch.equal(chain.masks[r], want), r
            assert not bool(chain.chosen[r].any())
        assert torch.equal(chain.masks[28], round_trip_masks(masks, boxes, 28))


def test_chosen_cells_are_the_most_uncertain():
    g = torch.Generator().manual_seed(0)
    coarse = torch.rand(5, 28, 28, generator=g)
    target = torch.rand(5, 56, 56, generator=g)
    up = upsample2x(coarse)
    for n in (1, 196, 784, 3000):
        refined, chosen = refine_points(coarse, target, n)
        assert chosen.flatten(1).sum(1).tolist() == [n] * 5
        u = (up - 0.5).abs()
        for k in range(5):  # every chosen cell is at least as uncertain as every other one
            assert u[k][chosen[k]].max() <= u[k][~chosen[k]].min()
        assert torch.equal(refined[chosen], target[chosen]) and torch.equal(refined[~chosen], up[~chosen])
        idx = select_uncertain(up, n)
        assert torch.equal(torch.zeros(5, 56 * 56, dtype=torch.bool).scatter_(1, idx, True), chosen.flatten(1))


def test_thin_spoke_only_a_dense_trip_recovers():
    masks, box, spoke = disc_with_spoke()
    recall = {}
    for n in (0, 64, 196, None):
        got = point_chain(masks, box, n).masks
        recall[n] = {r: float((got[r] & spoke).sum() / spoke.sum()) for r in RESOLUTIONS}
    assert recall[None][28] < 0.1  # lost at 28...
    assert recall[None][112] > 0.9  # ...back in the dense 112 trip
    assert recall[64][112] < 0.1 and recall[196][112] < 0.1  # never uncertain enough for a point

    res = point_ceiling(masks, box, points=(64, 196, 392))
    iou = [res.mask_iou[(label, 112)][0] for label in ("N=0", "N=64", "N=196", "N=392", "dense")]
    assert all(b >= a - 1e-3 for a, b in zip(iou, iou[1:])), iou  # more points, no worse
    assert iou[2] > iou[0] + 0.003  # the points do refine the disc's outline
    assert res.mask_iou[("dense", 112)][0] == pytest.approx(float(round_trip_iou(masks, box, 112)[0]))
    thin = res.thin["N=196"]
    assert thin["thin_fg"][0] >= 0.8 * int(spoke.sum())  # the spoke is what the points left behind
    assert res.thin["dense"]["excess"][0] == 0 and res.thin["dense"]["thin"][0] == 0
    assert res.thin["N=0"]["lost_fg_unchosen"][0] == res.thin["N=0"]["lost_fg"][0]


def test_ceiling_of_images_concatenates(shapes):
    parts = [point_ceiling(m, b, points=(196,), boundary=False) for m, b in shapes]
    both = concat(parts)
    n = sum(m.shape[0] for m, _ in shapes)
    assert both.mask_iou[("N=196", 112)].shape == (n,)
    assert np.isnan(both.boundary_iou[("28", 28)]).all()
    dense = np.concatenate([round_trip_iou(m, b, 56).numpy() for m, b in shapes])
    np.testing.assert_allclose(both.mask_iou[("dense", 56)], dense)
