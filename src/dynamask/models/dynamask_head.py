"""The DynaMask mask branch: a shared 14×14 RoI feature, the r-FPN stages 14→28→56→112 fed by
image-level FPN features, and the Mask Switch Module, under a resolution policy.

Training runs every stage on every positive RoI (deep supervision) and trains the switch with
the selection and budget losses. Inference runs stage 0 and the switch for all detections,
then stage k only for the RoIs whose chosen resolution is at least R_k — the skipped stages are
really not computed — and hands back each mask at its own resolution for the batched paste.

This file builds the head from its parts and holds its settings and its cost table; the passes
are in their own files, mixed into :class:`DynaMaskHead`: training in head_training.py, the
point stages of ``refinement="points"`` in point_stages.py, inference in head_inference.py.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn
from torchvision.ops import roi_align

from .deform_conv import DEFORM_KERNELS
from .flops import conv2d_flops, roi_align_flops
from .geometry import MaskRoIPool, check_geometry
from .head_inference import InferenceMixin
from .head_training import TrainingMixin
from .mask_switch import CostSwitch, PaperSwitch, check_switch
from .point_refine import INFERENCE_POINTS, TRAINING_POINTS, PointStage, check_refinement
from .point_stages import PointStagesMixin
from .policy import RESOLUTIONS, SIZE_THRESHOLDS, check_policy, smallest_budget, stages_needed
from .rfpn import FeatureAggregation, StagePredictor, init_conv
from .roi_utils import level_scale

#: Named widths: (region feature at 14, 28, 56, 112; reduced image feature pooled at 14, 28, 56).
#: "balanced" (default): each further stage costs about as much as everything before it, so
#: stopping early saves most of the work (docs, "How it works: Cost per stage"). "paper": the authors'
#: release — two 3×3 convs of 256 at 14, then 128 / 64 / 32, each image feature reduced to its
#: stage's own width.
WIDTH_PRESETS = {
    "balanced": ((96, 64, 48, 32), (32, 32, 16)),
    "paper": ((256, 128, 64, 32), (256, 128, 64)),
}

#: per switch, the default weights of the paper's budget hinge and usage-balance term: the cost
#: switch meets its budget through λ (docs, "How it works"); the paper switch is trained with
#: the authors' weights (hinge 0.3, balance 0.8)
SWITCH_LOSS_DEFAULTS = {
    "cost": {"budget_weight": 0.0, "balance_weight": 0.0},
    "paper": {"budget_weight": 0.3, "balance_weight": 0.8},
}


def resolve_widths(
    widths: str | tuple[int, ...] | None = None, reduced_channels: tuple[int, ...] | None = None
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(stage widths, reduced image-feature widths) from a preset name or an explicit list of four
    (reduced widths: as given, else the preset's, else the balanced default)."""
    if widths is None:
        widths = "balanced"
    if isinstance(widths, str):
        if widths not in WIDTH_PRESETS:
            raise ValueError(
                f"widths must be one of {', '.join(WIDTH_PRESETS)} or a list of 4 integers; got {widths!r}"
            )
        widths, preset_reduced = WIDTH_PRESETS[widths]
    else:
        preset_reduced = WIDTH_PRESETS["balanced"][1]
    widths = tuple(int(w) for w in widths)
    if len(widths) != 4 or min(widths) < 1:
        raise ValueError(f"widths must be 4 positive integers (stages 14, 28, 56, 112); got {widths}")
    reduced = tuple(int(c) for c in (reduced_channels if reduced_channels is not None else preset_reduced))
    if len(reduced) != 3 or min(reduced) < 1:
        raise ValueError(f"reduced_channels must be 3 positive integers (stages 14, 28, 56); got {reduced}")
    return widths, reduced


def warn_unreachable_budget(key: str, value: float, lowest: float) -> None:
    """One warning for a budget below what stopping every instance at 14×14 costs."""
    warnings.warn(
        f"{key}={value:g} is below the cheapest stage's share of the full mask path; "
        f"clamped to {lowest:.4f}, the smallest reachable value (every instance at 14×14)",
        UserWarning,
        stacklevel=4,
    )  # past the property setter and nn.Module.__setattr__


def check_point_options(policy: str, switch: str, refinement: str, mask_geometry: str) -> None:
    """Refuse the combinations point stages cannot serve (the paper switch, the legacy geometry)."""
    if refinement != "points":
        return
    if policy == "dynamic" and switch == "paper":
        raise ValueError(
            "switch 'paper' cannot be used with refinement 'points': the authors' switch is "
            "trained on every stage's dense edge map, which point stages do not compute; "
            "use switch 'cost' (the default) or refinement 'dense'"
        )
    if mask_geometry != "exact":
        raise ValueError(
            "refinement 'points' needs mask_geometry 'exact': its targets are read from the "
            "masks at the points' exact coordinates"
        )


def build_shared_convs(in_channels: int, width: int) -> nn.Sequential:
    """The two 3×3 convs on the pooled 14×14 RoI feature that every stage and the switch start from."""
    return nn.Sequential(
        init_conv(nn.Conv2d(in_channels, width, 3, padding=1)),
        nn.ReLU(inplace=True),
        init_conv(nn.Conv2d(width, width, 3, padding=1)),
        nn.ReLU(inplace=True),
    )


def build_dense_stages(
    dense: int,
    num_classes: int,
    widths: tuple[int, ...],
    in_channels: int,
    reduced_channels: tuple[int, ...],
    fam: str,
    sampling_ratio: int,
    deform_kernel: str,
) -> tuple[nn.ModuleList, nn.ModuleList]:
    """The first ``dense`` r-FPN stages: a predictor per stage (class-specific masks but at 112)
    and, between stages k and k+1, the FAM that fuses the pooled image feature."""
    last = len(RESOLUTIONS) - 1
    predictors = nn.ModuleList(
        StagePredictor(widths[k], num_classes if k < last else 1, refine=k > 0) for k in range(dense)
    )
    aggregators = nn.ModuleList(
        FeatureAggregation(
            widths[k], in_channels, reduced_channels[k], widths[k + 1], fam, sampling_ratio, deform_kernel
        )
        for k in range(dense - 1)
    )
    return predictors, aggregators


def build_point_stages(
    dense: int,
    num_stages: int,
    num_classes: int,
    widths: tuple[int, ...],
    in_channels: int,
    reduced_channels: tuple[int, ...],
) -> nn.ModuleList:
    """The stages after the ``dense`` ones as point stages, each fed the last dense stage's region
    feature (empty with dense refinement)."""
    last = len(RESOLUTIONS) - 1
    return nn.ModuleList(
        PointStage(in_channels, reduced_channels[k - 1], widths[dense - 1], widths[k], num_classes if k < last else 1)
        for k in range(dense, num_stages)
    )


def build_switch(
    policy: str, switch: str, in_channels: int, width: int, level: str, sampling_ratio: int
) -> nn.Module | None:
    """The Mask Switch Module of the dynamic policy (none for the others): the cost switch on the
    shared region feature, or the authors' switch on the image feature at ``level``."""
    if policy != "dynamic":
        return None
    if switch == "cost":
        return CostSwitch(width, num_choices=len(RESOLUTIONS))
    return PaperSwitch(in_channels, num_choices=len(RESOLUTIONS), level=level, sampling_ratio=sampling_ratio)


class DynaMaskHead(TrainingMixin, PointStagesMixin, InferenceMixin, nn.Module):
    """The DynaMask mask branch (see the module docstring): ``forward_train`` for the losses of the
    positive RoIs, ``forward_infer`` for the masks of the detections. Its parameters: ``roi_pool``
    and ``shared`` (the 14×14 RoI feature), ``predictors`` and ``aggregators`` (the dense stages
    and the FAMs between them), ``point_stages`` (``refinement="points"``) and ``switch``."""

    def __init__(
        self,
        num_classes: int,
        policy: str = "dynamic",
        in_channels: int = 256,
        widths: str | tuple[int, ...] = "balanced",
        reduced_channels: tuple[int, ...] | None = None,
        fam: str = "deform",
        featmap_names: tuple[str, ...] = ("0", "1", "2", "3"),
        image_levels: tuple[str, ...] = ("2", "1", "0"),
        stage_loss_weights: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0),
        edge_loss_weight: float = 1.0,
        select_loss_weight: float = 0.0,
        budget_target: float = 0.4,
        budget_weight: float | None = None,
        balance_weight: float | None = None,
        switch_cost_weight: float = 1.0,
        gumbel_tau: float = 0.5,
        size_thresholds: tuple[float, ...] = SIZE_THRESHOLDS,
        sampling_ratio: int = 2,
        mask_geometry: str = "exact",
        switch: str = "cost",
        deform_kernel: str = "auto",
        paper_signal: str = "edge",
        refinement: str = "points",
        refinement_points: int = INFERENCE_POINTS,
        refinement_train_points: int = TRAINING_POINTS,
    ):
        super().__init__()
        check_policy(policy)
        self.switch_kind = check_switch(switch)
        self.refinement = check_refinement(refinement)
        check_point_options(policy, switch, refinement, mask_geometry)
        if paper_signal not in self.PAPER_SIGNALS:
            raise ValueError(f"paper_signal must be one of {', '.join(self.PAPER_SIGNALS)}; got {paper_signal!r}")
        self.paper_signal = paper_signal
        loss_defaults = SWITCH_LOSS_DEFAULTS[switch]
        widths, reduced_channels = resolve_widths(widths, reduced_channels)
        self.widths, self.reduced_channels = widths, reduced_channels
        self.num_stages = stages_needed(policy)
        self.resolutions = RESOLUTIONS[: self.num_stages]
        self.in_channels = in_channels
        self.sampling_ratio = sampling_ratio
        self.image_levels = tuple(image_levels)
        self.stage_loss_weights = tuple(stage_loss_weights)
        self.edge_loss_weight = edge_loss_weight
        self.select_loss_weight = select_loss_weight
        self.budget_weight = loss_defaults["budget_weight"] if budget_weight is None else budget_weight
        self.balance_weight = loss_defaults["balance_weight"] if balance_weight is None else balance_weight
        self.switch_cost_weight = switch_cost_weight
        self.gumbel_tau = gumbel_tau
        self.size_thresholds = tuple(size_thresholds)

        self.roi_pool = MaskRoIPool(list(featmap_names), RESOLUTIONS[0], sampling_ratio, mask_geometry)
        self.shared = build_shared_convs(in_channels, widths[0])
        # with point refinement only 14 and 28 are dense; 56 and 112 are point stages
        dense = self.num_stages if refinement == "dense" else min(self.num_stages, self.DENSE_STAGES_WITH_POINTS)
        self.predictors, self.aggregators = build_dense_stages(
            dense, num_classes, widths, in_channels, reduced_channels, fam, sampling_ratio, deform_kernel
        )
        self.point_stages = build_point_stages(
            dense, self.num_stages, num_classes, widths, in_channels, reduced_channels
        )
        self.refinement_points = refinement_points
        if int(refinement_train_points) < 1:
            raise ValueError(f"refinement_train_points must be a positive integer, got {refinement_train_points}")
        #: points supervised per RoI and point stage in training (importance-sampled)
        self.refinement_train_points = int(refinement_train_points)
        self.switch = build_switch(policy, switch, in_channels, widths[0], featmap_names[0], sampling_ratio)
        self._policy = policy
        self.mask_budget = 1.0
        self._init_experiment_hooks()
        self.budget_target = budget_target  # checked against the stage costs, which exist now

    def _init_experiment_hooks(self) -> None:
        """Controls and records for experiments, all off: logs, the score floor, the choice hook."""
        #: set to a list to record, per choose_stages call, (switch outputs, detection scores)
        self.switch_log: list | None = None
        #: set to a list to record, at inference, each stage's mask logits for the RoIs that ran it
        #: (for experiments that judge every stage, e.g. the oracle switch; dense and point stages alike)
        self.stage_log: list | None = None
        #: detections scoring below this stop at 14×14 without running the switch (and are charged
        #: only stage 0); 0 = off. A control for experiments (the score-gated fixed-112 of the
        #: benchmarks); the cost switch weighs scores itself and needs no floor.
        self.score_floor = 0.0
        #: a function (choice, SwitchInput, counts) → choice that replaces the policy's stage per
        #: RoI at inference — for experiments that dictate resolutions (an oracle, a forced mix).
        #: Its choices are charged as the policy's own (with the switch under ``dynamic``).
        self.choice_hook = None

    #: what teaches the paper switch quality: "edge", the authors' signal (each stage's edge loss
    #: against its own target, times the stage loss weight), or "selection_cost", each stage's mask
    #: error against one 112×112 target (losses.selection_costs), comparable across stages
    PAPER_SIGNALS = ("edge", "selection_cost")

    #: dense stages of a head with ``refinement="points"``: 14 and 28
    DENSE_STAGES_WITH_POINTS = 2

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Older checkpoints kept λ in the head ("switch_lambda", also heads without a switch); it
        # now lives in the cost switch ("switch.price"). Keyed on this head's own switch kind,
        # which a checkpoint records: a paper switch (no λ) loads untouched.
        lam = state_dict.pop(f"{prefix}switch_lambda", None)
        updates = state_dict.pop(f"{prefix}switch_lambda_updates", None)
        if isinstance(self.switch, CostSwitch) and f"{prefix}switch.price" not in state_dict:
            if lam is None:
                # A checkpoint from before the switch predicted costs: its outputs were logits.
                # Negated they rank the stages the same way, so with λ = 0 it chooses as it did.
                for name in ("fc2.weight", "fc2.bias"):
                    key = f"{prefix}switch.{name}"
                    if key in state_dict:
                        state_dict[key] = -state_dict[key]
            state_dict[f"{prefix}switch.price"] = torch.zeros(()) if lam is None else lam
            state_dict[f"{prefix}switch.price_updates"] = (
                torch.zeros((), dtype=torch.int64) if updates is None else updates
            )
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def cost_fractions(self, device=None) -> Tensor:
        """Cumulative cost of stopping at each stage (switch included) / the full path's, K."""
        costs = self.stage_costs(with_switch=True)
        return (costs / costs[-1]).float().to(device)

    # ----------------------------------------------------------------- geometry, policy, costs
    @property
    def mask_geometry(self) -> str:
        """``"exact"`` or ``"torchvision"`` (see geometry.py): the shared RoI feature and the targets
        follow it; the paste follows ``DynaMaskRCNN.mask_geometry``, which sets both."""
        return self.roi_pool.geometry

    @mask_geometry.setter
    def mask_geometry(self, geometry: str) -> None:
        if check_geometry(geometry) != "exact" and getattr(self, "refinement", "dense") == "points":
            raise ValueError(
                f"mask_geometry {geometry!r}: a head with refinement 'points' reads its targets at the "
                f"points' exact coordinates and needs 'exact'"
            )
        self.roi_pool.geometry = geometry

    @property
    def deform_kernel(self) -> str:
        """Who computes the deformable FAM conv: ``"auto"``, ``"gather"`` or ``"torchvision"``
        (see deform_conv.py); same weights and FLOPs either way."""
        return self.aggregators[0].deform_kernel if len(self.aggregators) else "auto"

    @deform_kernel.setter
    def deform_kernel(self, kernel: str) -> None:
        if kernel not in DEFORM_KERNELS:
            raise ValueError(f"deform_kernel must be one of {DEFORM_KERNELS}, got {kernel!r}")
        for fam in self.aggregators:
            fam.deform_kernel = kernel

    @property
    def refinement_points(self) -> int:
        """Points re-predicted per RoI at each point stage at inference (``refinement="points"``);
        a stage of S×S cells re-predicts min(points, S²). Changing it changes the stage costs, so
        a calibration made with another value no longer holds (``calibrate`` records it)."""
        return self._refinement_points

    @refinement_points.setter
    def refinement_points(self, points: int) -> None:
        points = int(points)
        if points < 1:
            raise ValueError(f"refinement_points must be a positive integer, got {points}")
        self._refinement_points = points

    def stage_points(self, k: int) -> int:
        """Points a point stage k re-predicts per RoI at inference."""
        return min(self._refinement_points, RESOLUTIONS[k] ** 2)

    @property
    def policy(self) -> str:
        return self._policy

    @policy.setter
    def policy(self, policy: str) -> None:
        check_policy(policy)
        if stages_needed(policy) > self.num_stages:
            raise ValueError(
                f"policy {policy!r} needs {stages_needed(policy)} stages; this head was "
                f"built with {self.num_stages} (up to {self.resolutions[-1]}×{self.resolutions[-1]})"
            )
        if policy == "dynamic" and self.switch is None:
            raise ValueError(
                "policy 'dynamic' needs the Mask Switch Module; this head was built without it "
                "(build the model with policy='dynamic')"
            )
        self._policy = policy

    @property
    def budget_target(self) -> float:
        """Training target of the mean mask cost, a fraction of the full path (with the switch)."""
        return self._budget_target

    @budget_target.setter
    def budget_target(self, target: float) -> None:
        target = float(target)
        if not 0.0 < target <= 1.0:
            raise ValueError(f"budget_target must be in (0, 1], got {target}")
        lowest = self.smallest_budget()
        if self.switch is not None and target < lowest:  # without a switch the target is unused
            warn_unreachable_budget("model.mask_budget_target", target, lowest)
            target = lowest
        self._budget_target = target

    def smallest_budget(self) -> float:
        """The lowest reachable mean cost as a fraction of the full path: every RoI at 14×14."""
        return smallest_budget(self.stage_costs(with_switch=self.switch is not None))

    def flops_table(self) -> dict:
        """Per-RoI FLOPs from layer shapes: the shared part (pool, convs, stage-0 prediction),
        each stage's increment, the switch, and cumulative costs with and without the switch."""
        r0 = RESOLUTIONS[0]
        shared = roi_align_flops(self.in_channels, (r0, r0), self.sampling_ratio)
        shared += sum(conv2d_flops(m, (r0, r0)) for m in self.shared if isinstance(m, nn.Conv2d))
        shared += self.predictors[0].flops(r0)
        dense = len(self.predictors)
        increments = (
            [shared]
            + [
                self.aggregators[k - 1].flops(RESOLUTIONS[k - 1]) + self.predictors[k].flops(RESOLUTIONS[k])
                for k in range(1, dense)
            ]
            + [self.point_stages[k - dense].point_flops() * self.stage_points(k) for k in range(dense, self.num_stages)]
        )
        cumulative = torch.tensor(increments, dtype=torch.float64).cumsum(0)
        switch = self.switch.flops() if self.switch is not None else 0
        return {
            "resolutions": list(self.resolutions),
            "shared": shared,
            "increments": increments,
            "switch": switch,
            "cumulative": cumulative.tolist(),
            "cumulative_with_switch": (cumulative + switch).tolist(),
        }

    def stage_costs(self, with_switch: bool) -> Tensor:
        table = self.flops_table()
        return torch.tensor(table["cumulative_with_switch" if with_switch else "cumulative"], dtype=torch.float64)

    # ------------------------------------------------------------------------ image features
    def _pool_image_feature(
        self,
        features: dict[str, Tensor],
        stage: int,
        rois: Tensor,
        image_shapes: list[tuple[int, int]],
        reduce_first: bool = False,
    ) -> Tensor:
        """RoIAlign of the FPN level that matches this stage (P4 at 14, P3 at 28, P2 at 56) at
        that level's true scale; with ``reduce_first`` the map is reduced to few channels first."""
        feature = features[self.image_levels[stage]]
        if reduce_first:
            feature = self.aggregators[stage].reduce_image_feature(feature)
        r = RESOLUTIONS[stage]
        return roi_align(
            feature,
            rois.to(feature.dtype),
            (r, r),
            spatial_scale=level_scale(feature, image_shapes),
            sampling_ratio=self.sampling_ratio,
            aligned=True,
        )
