"""Our speed-ups must not change results: with the same weights, DynaMaskRCNN carrying the
standard Mask R-CNN head returns what torchvision's MaskRCNN returns (boxes, labels, scores
exactly; pasted masks to float precision) — RoI heads, batched paste and post-processing
included. And the detector weights of torchvision's model load into DynaMask unchanged."""

import copy

import pytest
import torch
from torchvision.models.detection import MaskRCNN

from dynamask.models import dynamask_resnet18_fpn, maskrcnn_resnet18_fpn

SETTINGS = dict(min_size=96, max_size=128, box_score_thresh=0.0, box_detections_per_img=20, rpn_post_nms_top_n_test=100)


def _torchvision_twin(ours):
    tv = MaskRCNN(copy.deepcopy(ours.backbone), num_classes=5, **SETTINGS)
    state = {}
    for k, v in ours.state_dict().items():
        state[k.replace("roi_heads.mask_branch.mask_", "roi_heads.mask_")] = v
    state = {k: v for k, v in state.items() if not k.startswith("roi_heads.mask_branch.")}
    tv.load_state_dict(state)
    return tv.eval()


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(0)
    return [torch.rand(3, 96, 128, generator=g), torch.rand(3, 120, 90, generator=g)]


def test_maskrcnn_head_matches_torchvision(images):
    torch.manual_seed(0)
    ours = maskrcnn_resnet18_fpn(5, mask_geometry="torchvision", **SETTINGS).eval()
    tv = _torchvision_twin(ours)
    with torch.no_grad():
        a, b = tv(images), ours(images)
    for ra, rb in zip(a, b):
        assert len(ra["boxes"]) == 20
        assert torch.equal(ra["boxes"], rb["boxes"])
        assert torch.equal(ra["labels"], rb["labels"])
        assert torch.equal(ra["scores"], rb["scores"])
        assert ra["masks"].shape == rb["masks"].shape
        assert torch.allclose(ra["masks"], rb["masks"], atol=1e-5)


def test_torchvision_detector_weights_load_into_dynamask(images):
    torch.manual_seed(0)
    ours = dynamask_resnet18_fpn(5, policy="fixed-28", **SETTINGS).eval()
    tv = _torchvision_twin(maskrcnn_resnet18_fpn(5, **SETTINGS))
    ours.load_detector_state({k: v for k, v in tv.state_dict().items() if not k.startswith("roi_heads.mask_")})
    with torch.no_grad():
        a, b = tv(images), ours(images)
    for ra, rb in zip(a, b):
        assert torch.equal(ra["boxes"], rb["boxes"]) and torch.equal(ra["scores"], rb["scores"])


def test_detector_state_mismatch_is_reported():
    ours = dynamask_resnet18_fpn(5, **SETTINGS)
    other = dynamask_resnet18_fpn(7, **SETTINGS)  # box predictor for 7 classes
    with pytest.raises(RuntimeError, match="roi_heads.box_predictor"):
        ours.load_detector_state(other.state_dict())
    with pytest.raises(RuntimeError, match="missing"):
        ours.load_detector_state({})


def test_freeze_detector_trains_only_the_mask_branch():
    model = dynamask_resnet18_fpn(5, **SETTINGS).freeze_detector()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("roi_heads.mask_branch.") for n in trainable)
    model.train()
    assert not model.backbone.training and model.roi_heads.training
