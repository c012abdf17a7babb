"""DynaMaskRCNN and its builder functions.

The detector is torchvision's Faster R-CNN (backbone + FPN, RPN, box head) with RoI heads that
carry a pluggable mask branch, and a transform that pastes masks in batches. Builders compose it
explicitly; nothing is downloaded: ``weights_backbone`` is a local ResNet state-dict file.
:func:`build_model` is the builder driven by a config dict; it lives here, below training and
inference, so that both construct models the same way without importing each other.
"""

from __future__ import annotations

import os

import torch
from torch import nn
from torchvision.models import resnet
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
from torchvision.ops.misc import FrozenBatchNorm2d

from ..errors import DynaMaskError
from .dynamask_head import DynaMaskHead, warn_unreachable_budget
from .maskrcnn_head import MaskRCNNBranch
from .roi_heads import BatchedPasteTransform, MaskBranchRoIHeads

HEAD_OPTIONS = (
    "fam",
    "widths",
    "reduced_channels",
    "stage_loss_weights",
    "edge_loss_weight",
    "select_loss_weight",
    "budget_target",
    "budget_weight",
    "balance_weight",
    "switch_cost_weight",
    "gumbel_tau",
    "size_thresholds",
    "mask_geometry",
    "switch",
    "deform_kernel",
    "paper_signal",
    "refinement",
    "refinement_points",
    "refinement_train_points",
)


class DynaMaskRCNN(FasterRCNN):
    """Mask R-CNN-style detector; ``mask_branch`` is a DynaMaskHead or a MaskRCNNBranch.

    Same calling convention as torchvision's MaskRCNN: ``model(images, targets)`` returns a
    dict of losses in train mode; in eval mode a list of dicts with ``boxes``, ``labels``,
    ``scores``, ``masks`` (N×1×H×W in [0, 1]), ``mask_resolution`` and ``mask_flops``.
    The mask geometry (``mask_geometry``, see geometry.py) is the mask branch's.
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        mask_branch: nn.Module,
        mask_rois_per_image: int | None = None,
        box_representation_size: int = 1024,
        mask_targets: str = "original",
        **kwargs,
    ):
        if box_representation_size != 1024 and "box_head" not in kwargs:
            # A narrower box head (torchvision's is 12544→1024→1024, 14M parameters at FPN 256).
            resolution = 7
            kwargs["box_head"] = TwoMLPHead(backbone.out_channels * resolution**2, box_representation_size)
            kwargs["box_predictor"] = FastRCNNPredictor(box_representation_size, num_classes)
        super().__init__(backbone, num_classes=None if "box_predictor" in kwargs else num_classes, **kwargs)
        self.roi_heads = MaskBranchRoIHeads.from_box_heads(self.roi_heads, mask_branch, mask_rois_per_image)
        self.transform = BatchedPasteTransform.from_transform(self.transform)
        self._mask_targets = check_mask_targets(mask_targets)
        self.mask_geometry = mask_branch.mask_geometry

    @property
    def mask_branch(self) -> nn.Module:
        return self.roi_heads.mask_branch

    # Parameters whose names start with this prefix belong to the mask branch.
    MASK_BRANCH_PREFIX = "roi_heads.mask_branch."

    def freeze_detector(self) -> DynaMaskRCNN:
        """Train only the mask branch: backbone, FPN, RPN and box head stop learning and the
        backbone's batch norms keep their statistics. This is how several mask heads are
        compared on one and the same detector (benchmarks/accuracy_vs_cost.py)."""
        for name, parameter in self.named_parameters():
            if not name.startswith(self.MASK_BRANCH_PREFIX):
                parameter.requires_grad_(False)
        self.detector_frozen = True
        return self.train(self.training)

    def train(self, mode: bool = True) -> DynaMaskRCNN:
        super().train(mode)
        if getattr(self, "detector_frozen", False):
            self.backbone.eval()  # batch-norm statistics stay those of the trained detector
        return self

    def load_detector_state(self, state: dict) -> None:
        """Load everything but the mask branch from a state dict (of any mask head)."""
        own = {k for k in self.state_dict() if not k.startswith(self.MASK_BRANCH_PREFIX)}
        detector_state = {k: v for k, v in state.items() if not k.startswith(self.MASK_BRANCH_PREFIX)}
        missing = sorted(own - detector_state.keys())
        unexpected = sorted(detector_state.keys() - own)
        if missing or unexpected:
            raise RuntimeError(f"detector weights do not fit: missing {missing[:4]}, unexpected {unexpected[:4]}")
        shapes = [k for k, v in detector_state.items() if self.state_dict()[k].shape != v.shape]
        if shapes:
            k = shapes[0]
            raise RuntimeError(
                f"detector weights do not fit: {k} has shape {tuple(detector_state[k].shape)}, "
                f"the model has {tuple(self.state_dict()[k].shape)}"
            )
        self.load_state_dict(detector_state, strict=False)

    @property
    def mask_geometry(self) -> str:
        """``"exact"`` (continuous boxes, RoIAlign ``aligned=True``) or ``"torchvision"`` (Mask
        R-CNN's legacy geometry). Setting it switches the mask RoI pooling, the mask targets and
        the paste together."""
        return self.mask_branch.mask_geometry

    @mask_geometry.setter
    def mask_geometry(self, geometry: str) -> None:
        self.mask_branch.mask_geometry = geometry  # validates
        self.transform.mask_geometry = geometry
        self.transform.resize_masks = self.mask_targets_in_use == "resized"

    @property
    def mask_targets(self) -> str:
        """Where the mask branch's training targets come from: ``"original"`` (default) — the
        ground truth at the resolution it was given in, each RoI mapped back onto it, so resizing
        the image neither shifts the masks against their boxes nor erases their detail — or
        ``"resized"`` — masks resized with the image as bitmaps (nearest), as torchvision does.
        The legacy ``"torchvision"`` geometry always uses ``"resized"`` (:attr:`mask_targets_in_use`).
        Training only: inference and evaluation do not depend on it."""
        return self._mask_targets

    @mask_targets.setter
    def mask_targets(self, value: str) -> None:
        self._mask_targets = check_mask_targets(value)
        self.transform.resize_masks = self.mask_targets_in_use == "resized"

    @property
    def mask_targets_in_use(self) -> str:
        return "resized" if self.mask_geometry == "torchvision" else self._mask_targets

    @property
    def policy(self) -> str:
        return self.mask_branch.policy

    @policy.setter
    def policy(self, policy: str) -> None:
        if isinstance(self.mask_branch, MaskRCNNBranch):
            if policy != "fixed-28":
                raise ValueError("the Mask R-CNN head has a single 28×28 output; its policy is 'fixed-28'")
            return
        self.mask_branch.policy = policy

    @property
    def mask_budget(self) -> float:
        """Test-time dial: mean per-instance mask cost ≤ mask_budget × the full-112 path's cost."""
        return self.mask_branch.mask_budget

    @mask_budget.setter
    def mask_budget(self, value: float) -> None:
        value = float(value)
        if not 0.0 < value <= 1.0:
            raise ValueError(f"mask_budget must be in (0, 1], got {value}")
        if isinstance(self.mask_branch, DynaMaskHead) and self.mask_branch.switch is not None:
            lowest = self.mask_branch.smallest_budget()
            if value < lowest:  # the dial chooses 14×14 for everything there (policy.budget_multiplier)
                warn_unreachable_budget("model.mask_budget", value, lowest)
        self.mask_branch.mask_budget = value

    @property
    def mask_score_floor(self) -> float:
        """Detections scoring below it stop at 14×14 without running the switch (0 = off)."""
        return getattr(self.mask_branch, "score_floor", 0.0)

    @mask_score_floor.setter
    def mask_score_floor(self, value: float) -> None:
        value = float(value)
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"mask_score_floor must be in [0, 1], got {value}")
        if not isinstance(self.mask_branch, DynaMaskHead):
            if value > 0:
                raise ValueError("mask_score_floor needs a DynaMask head (the Mask R-CNN head has one resolution)")
            return
        self.mask_branch.score_floor = value

    def flops_table(self) -> dict:
        return self.mask_branch.flops_table()


#: where the mask targets come from in training (DynaMaskRCNN.mask_targets)
MASK_TARGETS = ("original", "resized")


def check_mask_targets(value: str) -> str:
    if value not in MASK_TARGETS:
        raise ValueError(f"mask_targets must be one of {', '.join(MASK_TARGETS)}; got {value!r}")
    return value


def _backbone(
    name: str, weights_backbone: str | os.PathLike | None, trainable_layers: int | None, fpn_channels: int = 256
):
    """ResNet + FPN (P2–P5 and a max-pooled P6) as torchvision builds it, with the FPN width
    as an option (256 is torchvision's; the CPU configs use less)."""
    pretrained = weights_backbone is not None
    if trainable_layers is None:
        trainable_layers = 3 if pretrained else 5
    if not 0 <= trainable_layers <= 5:
        raise ValueError(f"trainable_backbone_layers must be in [0, 5], got {trainable_layers}")
    body = resnet.__dict__[name](weights=None, norm_layer=FrozenBatchNorm2d if pretrained else nn.BatchNorm2d)
    if pretrained:
        load_backbone_weights(body, weights_backbone)
    trainable = ["layer4", "layer3", "layer2", "layer1", "conv1"][:trainable_layers]
    if trainable_layers == 5:
        trainable.append("bn1")
    for pname, parameter in body.named_parameters():
        if all(not pname.startswith(layer) for layer in trainable):
            parameter.requires_grad_(False)
    stage_channels = body.inplanes // 8  # width of layer1's output
    return BackboneWithFPN(
        body,
        {"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"},
        [stage_channels * 2**i for i in range(4)],
        fpn_channels,
        extra_blocks=LastLevelMaxPool(),
    )


def load_backbone_weights(body: nn.Module, path: str | os.PathLike) -> None:
    """Load a torchvision ResNet state dict (e.g. ``resnet50-*.pth``) from a local file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights_backbone: no such file {path!r} (dynamask never downloads weights)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    state = {k.removeprefix("module.").removeprefix("backbone.body."): v for k, v in state.items()}
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    missing, unexpected = body.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("fc.")]
    if unexpected or missing:
        raise ValueError(
            f"weights_backbone {path!r} does not look like a torchvision ResNet state dict "
            f"(unexpected keys: {list(unexpected)[:5]}, missing: {list(missing)[:5]})"
        )


def _split_head_kwargs(kwargs: dict) -> dict:
    head = {k: kwargs.pop(k) for k in HEAD_OPTIONS if k in kwargs}
    if "mask_budget_target" in kwargs:
        head["budget_target"] = kwargs.pop("mask_budget_target")
    return head


def _dynamask(backbone_name, num_classes, policy, weights_backbone, trainable_backbone_layers, kwargs):
    head_kwargs = _split_head_kwargs(kwargs)
    mask_budget = kwargs.pop("mask_budget", 1.0)
    score_floor = kwargs.pop("mask_score_floor", 0.0)
    backbone = _backbone(backbone_name, weights_backbone, trainable_backbone_layers, kwargs.pop("fpn_channels", 256))
    head = DynaMaskHead(num_classes, policy=policy, in_channels=backbone.out_channels, **head_kwargs)
    model = DynaMaskRCNN(backbone, num_classes, head, **kwargs)
    model.mask_budget = mask_budget
    model.mask_score_floor = score_floor
    return model


def _maskrcnn(backbone_name, num_classes, weights_backbone, trainable_backbone_layers, kwargs):
    backbone = _backbone(backbone_name, weights_backbone, trainable_backbone_layers, kwargs.pop("fpn_channels", 256))
    layers = (kwargs.pop("mask_head_channels", 256),) * 4
    branch = MaskRCNNBranch(
        num_classes, backbone.out_channels, layers, mask_geometry=kwargs.pop("mask_geometry", "exact")
    )
    return DynaMaskRCNN(backbone, num_classes, branch, **kwargs)


def dynamask_resnet50_fpn(
    num_classes: int,
    policy: str = "dynamic",
    *,
    weights_backbone=None,
    trainable_backbone_layers: int | None = None,
    **kwargs,
) -> DynaMaskRCNN:
    """DynaMask on ResNet-50-FPN. Head options (``fam``, ``widths``, ``budget_target`` /
    ``mask_budget_target``, loss weights, ...) are taken from ``kwargs``; the rest go to
    torchvision's detector (``min_size``, ``box_score_thresh``, ``box_detections_per_img``, ...)."""
    return _dynamask("resnet50", num_classes, policy, weights_backbone, trainable_backbone_layers, kwargs)


def dynamask_resnet18_fpn(
    num_classes: int,
    policy: str = "dynamic",
    *,
    weights_backbone=None,
    trainable_backbone_layers: int | None = None,
    **kwargs,
) -> DynaMaskRCNN:
    """Small DynaMask on ResNet-18-FPN, for CPU experiments and tests."""
    return _dynamask("resnet18", num_classes, policy, weights_backbone, trainable_backbone_layers, kwargs)


def maskrcnn_resnet50_fpn(
    num_classes: int, *, weights_backbone=None, trainable_backbone_layers: int | None = None, **kwargs
) -> DynaMaskRCNN:
    """Standard Mask R-CNN (28×28 head) on ResNet-50-FPN through the same code path as DynaMask."""
    return _maskrcnn("resnet50", num_classes, weights_backbone, trainable_backbone_layers, kwargs)


def maskrcnn_resnet18_fpn(
    num_classes: int, *, weights_backbone=None, trainable_backbone_layers: int | None = None, **kwargs
) -> DynaMaskRCNN:
    return _maskrcnn("resnet18", num_classes, weights_backbone, trainable_backbone_layers, kwargs)


#: config key under ``model.`` → detector keyword of the builders
DETECTOR_KEYS = {
    "rpn_pre_nms_top_n_train": "rpn_pre_nms_top_n_train",
    "rpn_post_nms_top_n_train": "rpn_post_nms_top_n_train",
    "rpn_pre_nms_top_n_test": "rpn_pre_nms_top_n_test",
    "rpn_post_nms_top_n_test": "rpn_post_nms_top_n_test",
    "box_batch_size_per_image": "box_batch_size_per_image",
    "box_detections_per_img": "box_detections_per_img",
    "box_score_thresh": "box_score_thresh",
    "mask_rois_per_image": "mask_rois_per_image",
    "fpn_channels": "fpn_channels",
    "box_representation_size": "box_representation_size",
}

#: ResNet variants :func:`build_model` accepts as ``model.backbone``
BACKBONES = (
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "resnext50_32x4d",
    "resnext101_32x8d",
    "wide_resnet50_2",
    "wide_resnet101_2",
)


def build_model(cfg: dict, num_classes: int) -> DynaMaskRCNN:
    """The model a resolved config describes (``model`` and ``input`` sections), untrained.

    num_classes counts the background (dataset classes + 1), as in torchvision. Training builds
    from its config and inference from a checkpoint's, both through here, so the two agree."""
    m, inp = cfg["model"], cfg["input"]
    min_size = inp["min_size"]
    kwargs = {v: m[k] for k, v in DETECTOR_KEYS.items() if m.get(k) is not None}
    kwargs.update(min_size=tuple(min_size) if isinstance(min_size, list) else min_size, max_size=inp["max_size"])
    common = dict(
        weights_backbone=m.get("weights_backbone"), trainable_backbone_layers=m.get("trainable_backbone_layers")
    )
    backbone = m["backbone"]
    if backbone not in BACKBONES:
        raise DynaMaskError(f"model.backbone: unsupported backbone {backbone!r}")
    kwargs["mask_geometry"] = m["mask_geometry"]
    kwargs["mask_targets"] = m.get("mask_targets", "original")
    if m["head"] == "maskrcnn":
        kwargs["mask_head_channels"] = m["maskrcnn_head_channels"]
        return _maskrcnn(backbone, num_classes, common["weights_backbone"], common["trainable_backbone_layers"], kwargs)
    kwargs.update(
        fam=m["fam"],
        deform_kernel=m.get("deform_kernel", "auto"),
        stage_loss_weights=tuple(m["stage_loss_weights"]),
        edge_loss_weight=m["edge_loss_weight"],
        select_loss_weight=m["select_loss_weight"],
        budget_target=m["mask_budget_target"],
        budget_weight=m["budget_weight"],
        balance_weight=m["balance_weight"],
        switch_cost_weight=m["switch_cost_weight"],
        gumbel_tau=m["gumbel_tau"],
        mask_budget=m["mask_budget"],
        mask_score_floor=m.get("mask_score_floor", 0.0),
    )
    kwargs["switch"] = m["switch"]
    kwargs["paper_signal"] = m.get("paper_switch_signal", "edge")
    kwargs["refinement"] = m.get("refinement") or "dense"
    kwargs["refinement_points"] = m.get("refinement_points") or 784  # (a key written with points: never missing)
    kwargs["refinement_train_points"] = m.get("refinement_train_points") or kwargs["refinement_points"]
    if m.get("head_widths"):
        w = m["head_widths"]
        kwargs["widths"] = w if isinstance(w, str) else tuple(w)
    if m.get("head_reduced_channels"):
        kwargs["reduced_channels"] = tuple(m["head_reduced_channels"])
    return _dynamask(
        backbone, num_classes, m["policy"], common["weights_backbone"], common["trainable_backbone_layers"], kwargs
    )
