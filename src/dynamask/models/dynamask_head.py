"""The DynaMask mask branch: a shared 14×14 RoI feature, the r-FPN stages 14→28→56→112 fed by
image-level FPN features, and the Mask Switch Module, under a resolution policy.

Training runs every stage on every positive RoI (deep supervision) and trains the switch with
the selection and budget losses. Inference runs stage 0 and the switch for all detections,
then stage k only for the RoIs whose chosen resolution is at least R_k — the skipped stages are
really not computed — and hands back each mask at its own resolution for the batched paste.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import roi_align

from . import losses as L
from .deform_conv import DEFORM_KERNELS
from .flops import conv2d_flops, roi_align_flops
from .geometry import MaskRoIPool, check_geometry
from .mask_switch import CostSwitch, PaperSwitch, SwitchInput, check_switch
from .point_refine import (
    INFERENCE_POINTS,
    TRAINING_POINTS,
    PointStage,
    check_refinement,
    importance_points,
    point_targets,
    refine_at_points,
    sample_in_image,
    sample_in_rois,
)
from .policy import (
    RESOLUTIONS,
    SIZE_THRESHOLDS,
    check_policy,
    choose_under_budget,
    fixed_stage,
    size_rule,
    smallest_budget,
    stages_needed,
)
from .rfpn import FeatureAggregation, StagePredictor, init_conv
from .roi_utils import exporting, level_scale, rois_with_batch_index, split_groups

#: Named widths: (region feature at 14, 28, 56, 112; reduced image feature pooled at 14, 28, 56).
#: "balanced" (default): each further stage costs about as much as everything before it, so
#: stopping early saves most of the work (README, "Cost per stage"). "paper": the authors'
#: release — two 3×3 convs of 256 at 14, then 128 / 64 / 32, each image feature reduced to its
#: stage's own width.
WIDTH_PRESETS = {
    "balanced": ((96, 64, 48, 32), (32, 32, 16)),
    "paper": ((256, 128, 64, 32), (256, 128, 64)),
}

#: per switch, the default weights of the paper's budget hinge and usage-balance term: the cost
#: switch meets its budget through λ (README, "How it works"); the paper switch is trained with
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


class DynaMaskHead(nn.Module):
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
        if refinement == "points":
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

        c0 = widths[0]
        self.roi_pool = MaskRoIPool(list(featmap_names), RESOLUTIONS[0], sampling_ratio, mask_geometry)
        self.shared = nn.Sequential(
            init_conv(nn.Conv2d(in_channels, c0, 3, padding=1)),
            nn.ReLU(inplace=True),
            init_conv(nn.Conv2d(c0, c0, 3, padding=1)),
            nn.ReLU(inplace=True),
        )
        last = len(RESOLUTIONS) - 1
        # with point refinement only 14 and 28 are dense; 56 and 112 are point stages
        dense = self.num_stages if refinement == "dense" else min(self.num_stages, self.DENSE_STAGES_WITH_POINTS)
        self.predictors = nn.ModuleList(
            StagePredictor(widths[k], num_classes if k < last else 1, refine=k > 0) for k in range(dense)
        )
        self.aggregators = nn.ModuleList(
            FeatureAggregation(
                widths[k], in_channels, reduced_channels[k], widths[k + 1], fam, sampling_ratio, deform_kernel
            )
            for k in range(dense - 1)
        )
        self.point_stages = nn.ModuleList(
            PointStage(
                in_channels, reduced_channels[k - 1], widths[dense - 1], widths[k], num_classes if k < last else 1
            )
            for k in range(dense, self.num_stages)
        )
        self.refinement_points = refinement_points
        if int(refinement_train_points) < 1:
            raise ValueError(f"refinement_train_points must be a positive integer, got {refinement_train_points}")
        #: points supervised per RoI and point stage in training (importance-sampled)
        self.refinement_train_points = int(refinement_train_points)
        if policy != "dynamic":
            self.switch = None
        elif switch == "cost":
            self.switch = CostSwitch(c0, num_choices=len(RESOLUTIONS))
        else:
            self.switch = PaperSwitch(
                in_channels, num_choices=len(RESOLUTIONS), level=featmap_names[0], sampling_ratio=sampling_ratio
            )
        self._policy = policy
        self.mask_budget = 1.0
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
        self.budget_target = budget_target  # checked against the stage costs, which exist now

    #: what teaches the paper switch quality: "edge", the authors' signal (each stage's edge loss
    #: against its own target, times the stage loss weight), or "selection_cost", each stage's mask
    #: error against one 112×112 target (losses.selection_costs), comparable across stages
    PAPER_SIGNALS = ("edge", "selection_cost")

    #: dense stages of a head with ``refinement="points"``: 14 and 28
    DENSE_STAGES_WITH_POINTS = 2

    #: cost switch: scale from (predicted cost + λ·F) differences to Gumbel-softmax logits in training
    COST_TEMPERATURE = 0.05

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

    # ----------------------------------------------------------------------------- helpers
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

    def _zero_losses(self, reference: Tensor) -> dict[str, Tensor]:
        zero = sum(p.sum() for p in self.parameters()) * 0.0 + reference.sum() * 0.0
        keys = [f"loss_mask_{r}" for r in self.resolutions] + ["loss_mask_edge"]
        if self._policy == "dynamic":
            keys += ["loss_mask_budget"] + (["loss_mask_balance"] if self.balance_weight > 0 else [])
            if self.switch_kind == "cost":
                keys += ["loss_mask_select", "loss_mask_switch"]
            elif self.paper_signal == "selection_cost":
                keys += ["loss_mask_select"]
        return {k: zero for k in keys}

    # ---------------------------------------------------------------------------- training
    def forward_train(
        self,
        features: dict[str, Tensor],
        rois: list[Tensor],
        image_shapes,
        gt_masks: list[Tensor],
        gt_labels: list[Tensor],
        matched_idxs: list[Tensor],
    ) -> dict[str, Tensor]:
        labels = torch.cat([gl[idx] for gl, idx in zip(gt_labels, matched_idxs)])
        x = self.shared(self.roi_pool(features, rois, image_shapes))
        if labels.numel() == 0:
            return self._zero_losses(x)
        if self.refinement == "points":
            return self._forward_train_points(features, rois, image_shapes, gt_masks, matched_idxs, labels, x)
        boxes = torch.cat(rois)
        roi5 = rois_with_batch_index(rois)
        finest = RESOLUTIONS[-1]
        targets = L.downsample_targets(
            L.matched_mask_targets(gt_masks, rois, matched_idxs, finest, self.mask_geometry, image_shapes), RESOLUTIONS
        )

        losses: dict[str, Tensor] = {}
        region0 = x
        stages = self.all_stages(x, features, roi5, image_shapes, labels)
        stage_logits = [mask_logits for mask_logits, _ in stages]
        mask0, edge0 = stages[0]
        for k, r in enumerate(self.resolutions):
            losses[f"loss_mask_{r}"] = self.stage_loss_weights[k] * L.mask_bce(stage_logits[k], targets[r])
        edge_losses = self.stage_edge_losses([e for _, e in stages], targets)  # N×K

        if self._policy != "dynamic":
            losses["loss_mask_edge"] = self.edge_loss_weight * edge_losses.sum(dim=1).mean()
            return losses
        inp = SwitchInput(features, roi5, image_shapes, region0, mask0, edge0)
        if self.switch_kind == "cost":
            losses["loss_mask_edge"] = self.edge_loss_weight * edge_losses.sum(dim=1).mean()
            losses.update(self._cost_switch_losses(inp, stage_logits, targets[finest], boxes))
        elif self.paper_signal == "edge":
            losses.update(self._paper_switch_losses(inp, edge_losses))
        else:  # every stage keeps its edge loss; the switch learns from the comparable signal
            losses["loss_mask_edge"] = self.edge_loss_weight * edge_losses.sum(dim=1).mean()
            signal = L.selection_costs(stage_logits, targets[finest], boxes)
            losses.update(self._paper_switch_losses(inp, signal, key="loss_mask_select"))
        return losses

    def all_stages(
        self, region: Tensor, features: dict[str, Tensor], roi5: Tensor, image_shapes, labels: Tensor
    ) -> list[tuple[Tensor, Tensor]]:
        """(mask logits, edge logits) of every stage for every RoI, from the stage-0 region
        feature — the training pass (image features pooled from reduced maps)."""
        return self._dense_stages(region, features, roi5, image_shapes, labels)[0]

    def _dense_stages(
        self, region: Tensor, features: dict[str, Tensor], roi5: Tensor, image_shapes, labels: Tensor
    ) -> tuple[list[tuple[Tensor, Tensor]], Tensor]:
        """:meth:`all_stages` of the dense stages, and the last one's region feature."""
        out, x = [], region
        dense = len(self.predictors)
        for k in range(dense):
            x, mask_logits, edge_logits = self.predictors[k](x, labels)
            out.append((mask_logits, edge_logits))
            if k + 1 < dense:
                pooled = self._pool_image_feature(features, k, roi5, image_shapes, reduce_first=True)
                x = self.aggregators[k](x, pooled, mask_logits, edge_logits, image_reduced=True)
        return out, x

    def _forward_train_points(
        self,
        features: dict[str, Tensor],
        rois: list[Tensor],
        image_shapes,
        gt_masks: list[Tensor],
        matched_idxs: list[Tensor],
        labels: Tensor,
        x: Tensor,
    ) -> dict[str, Tensor]:
        """Training with point stages: the dense stages as usual; each point stage is supervised at
        importance-sampled points by the ground truth at those coordinates, and also run as
        inference runs it (top-N cells, no gradient) — the map the next stage refines and the
        switch's selection costs judge."""
        boxes = torch.cat(rois)
        roi5 = rois_with_batch_index(rois)
        dense = len(self.predictors)
        dynamic = self._policy == "dynamic"
        # the switch judges every stage against one 112×112 target; else no target finer than 28 is built
        top = RESOLUTIONS[-1] if dynamic else RESOLUTIONS[dense - 1]
        targets = L.downsample_targets(
            L.matched_mask_targets(gt_masks, rois, matched_idxs, top, self.mask_geometry, image_shapes),
            tuple(r for r in RESOLUTIONS if r <= top),
        )
        stages, region = self._dense_stages(x, features, roi5, image_shapes, labels)
        losses: dict[str, Tensor] = {}
        edges = []
        for k, (mask_logits, edge_logits) in enumerate(stages):
            r = RESOLUTIONS[k]
            losses[f"loss_mask_{r}"] = self.stage_loss_weights[k] * L.mask_bce(mask_logits, targets[r])
            edges.append(L.per_roi_bce(edge_logits, L.edge_map(targets[r])))
        maps = [mask_logits for mask_logits, _ in stages]
        coarse = maps[-1]
        for j, stage in enumerate(self.point_stages):
            k = dense + j
            r, count = RESOLUTIONS[k], self.stage_points(k)
            reduced = stage.reduce_image_feature(features[self.image_levels[k - 1]])
            points = importance_points(coarse.detach(), min(self.refinement_train_points, r * r))
            mask, edge = stage(
                sample_in_image(reduced, roi5, points, image_shapes),
                sample_in_rois(region, points),
                sample_in_rois(coarse, points)[..., 0],
                labels,
                image_reduced=True,
            )
            mask_target, edge_target = point_targets(gt_masks, rois, matched_idxs, points, r, image_shapes)
            losses[f"loss_mask_{r}"] = self.stage_loss_weights[k] * F.binary_cross_entropy_with_logits(
                mask, mask_target.to(mask.dtype)
            )
            edges.append(
                F.binary_cross_entropy_with_logits(edge, edge_target.to(edge.dtype), reduction="none").mean(dim=1)
            )
            with torch.no_grad():
                coarse = refine_at_points(
                    stage, coarse.detach(), count, reduced, roi5, region, labels, image_shapes, image_reduced=True
                )
            maps.append(coarse)
        weights = torch.tensor(self.stage_loss_weights[: self.num_stages], device=x.device)
        edge_losses = torch.stack(edges, dim=1) * weights.to(edges[0].dtype)
        losses["loss_mask_edge"] = self.edge_loss_weight * edge_losses.sum(dim=1).mean()
        if dynamic:
            mask0, edge0 = stages[0]
            inp = SwitchInput(features, roi5, image_shapes, x, mask0, edge0)
            losses.update(self._cost_switch_losses(inp, maps, targets[RESOLUTIONS[-1]], boxes))
        return losses

    def stage_edge_losses(self, edge_logits: list[Tensor], targets: dict[int, Tensor], weighted: bool = True) -> Tensor:
        """Per RoI and stage, the edge BCE against that stage's own target (N×K) — the signal the
        authors' switch is trained on — times the stage loss weights unless ``weighted=False``."""
        raw = torch.stack(
            [L.per_roi_bce(e, L.edge_map(targets[r])) for e, r in zip(edge_logits, self.resolutions)], dim=1
        )
        if not weighted:
            return raw
        return raw * torch.tensor(self.stage_loss_weights[: self.num_stages], device=raw.device, dtype=raw.dtype)

    def _cost_switch_losses(
        self, inp: SwitchInput, stage_logits: list[Tensor], target: Tensor, boxes: Tensor
    ) -> dict[str, Tensor]:
        """The cost switch regresses each stage's selection cost; λ prices compute so that its
        own choices meet the budget target. The paper's Gumbel selection loss, hinge and balance
        term are there with their weights (0 by default)."""
        predicted = self.switch(inp).float()
        costs = L.selection_costs(stage_logits, target, boxes)
        fractions = self.cost_fractions(predicted.device)
        # λ: the price at which the switch's *own* choices on this batch meet the budget target
        # (priced on the true costs instead, its smoother predictions crossed to the fine
        # stages too rarely and used half the budget)
        self.switch.update_price(L.selection_multiplier(predicted.detach(), fractions, self.budget_target))
        switch_logits = self.switch.scores(predicted, fractions) / self.COST_TEMPERATURE
        # Straight-through Gumbel-softmax: one-hot forward, soft gradient; the noise is drawn
        # on the logits' own device (CPU and CUDA alike).
        selection = F.gumbel_softmax(switch_logits, tau=self.gumbel_tau, hard=True)
        losses = {
            "loss_mask_select": self.select_loss_weight * L.selection_loss(selection, costs),
            "loss_mask_budget": self.budget_weight * L.budget_loss(selection, fractions, self.budget_target),
            "loss_mask_switch": self.switch_cost_weight * L.switch_cost_loss(predicted, costs),
        }
        if self.balance_weight > 0:
            losses["loss_mask_balance"] = self.balance_weight * L.balance_loss(switch_logits.softmax(dim=1))
        return losses

    def _paper_switch_losses(self, inp: SwitchInput, signal: Tensor, key: str = "loss_mask_edge") -> dict[str, Tensor]:
        """The authors' training of their switch: a straight-through Gumbel-softmax sample picks
        one stage per RoI; that stage's ``signal`` counts for the RoI (the gradient reaching the
        switch through the one-hot sample is what teaches it quality), the budget hinge on the
        selected cost and the usage-balance term teach it cost. Every stage keeps its mask loss.
        The authors' signal is the stage-weighted edge loss (it also trains the selected stage's
        edges, under ``key`` "loss_mask_edge"); ``paper_signal="selection_cost"`` passes the
        detached selection costs instead, under "loss_mask_select"."""
        logits = self.switch(inp).float()
        selection = F.gumbel_softmax(logits, tau=self.gumbel_tau, hard=True)
        fractions = self.cost_fractions(logits.device)
        losses = {
            key: self.edge_loss_weight * (selection * signal).sum(dim=1).mean(),
            "loss_mask_budget": self.budget_weight * L.budget_loss(selection, fractions, self.budget_target),
        }
        if self.balance_weight > 0:
            losses["loss_mask_balance"] = self.balance_weight * L.balance_loss(logits.softmax(dim=1))
        return losses

    # --------------------------------------------------------------------------- inference
    def gated(self, detection_scores: Tensor | None) -> Tensor | None:
        """RoIs the score floor stops at 14×14 (bool N), or None when no floor applies."""
        if self.score_floor <= 0 or detection_scores is None:
            return None
        return detection_scores < self.score_floor

    def choose_stages(self, inp: SwitchInput, counts: list[int]) -> Tensor:
        """Stage index per RoI under the current policy (and, for dynamic, the budget dial, the
        score floor and the choice hook)."""
        gated = self.gated(inp.detection_scores)
        if gated is None:
            choice = self._policy_choice(inp, counts)
        else:  # only the RoIs above the floor reach the policy (and the switch)
            keep = ~gated
            kept_counts = [int(c.sum()) for c in keep.split(counts)]
            choice = torch.zeros(gated.shape[0], dtype=torch.int64, device=gated.device)
            choice[keep] = self._policy_choice(inp.select(keep), kept_counts)
        if self.choice_hook is not None:
            choice = self.choice_hook(choice, inp, counts)
        return choice

    def _policy_choice(self, inp: SwitchInput, counts: list[int]) -> Tensor:
        boxes = inp.boxes
        n = boxes.shape[0]
        k = fixed_stage(self._policy)
        if k is not None:
            return torch.full((n,), k, dtype=torch.int64, device=boxes.device)
        if self._policy == "size":
            return size_rule(boxes, self.size_thresholds).clamp(max=self.num_stages - 1)
        outputs = self.switch(inp).float()
        if self.switch_log is not None:  # public hook: what the switch saw and said (calibration)
            self.switch_log.append((outputs.detach(), inp.detection_scores))
        scores = self.switch.scores(outputs, self.cost_fractions(boxes.device), inp.detection_scores)
        if self.mask_budget >= 1.0:
            return scores.argmax(dim=1)
        costs = self.stage_costs(with_switch=True).to(scores.device)
        return torch.cat([choose_under_budget(s, costs, self.mask_budget) for s in scores.split(counts)])

    def forward_infer(
        self,
        features: dict[str, Tensor],
        boxes_per_image: list[Tensor],
        labels_per_image: list[Tensor],
        image_shapes,
        scores_per_image: list[Tensor] | None = None,
    ) -> list[dict]:
        counts = [b.shape[0] for b in boxes_per_image]
        boxes = torch.cat(boxes_per_image)
        labels = torch.cat(labels_per_image)
        detection_scores = torch.cat(scores_per_image) if scores_per_image is not None else None
        roi5 = rois_with_batch_index(boxes_per_image)
        x = self.shared(self.roi_pool(features, boxes_per_image, image_shapes))
        x, mask_logits, edge_logits = self.predictors[0](x, labels)
        choice = self.choose_stages(
            SwitchInput(features, roi5, image_shapes, x, mask_logits, edge_logits, detection_scores), counts
        )
        flops = self.stage_costs(with_switch=self._policy == "dynamic").to(boxes.device)[choice]
        gated = self.gated(detection_scores)
        if gated is not None:  # a gated detection never ran the switch
            flops = torch.where(gated, self.stage_costs(with_switch=False).to(flops)[0], flops)

        # While exporting (tracing) nothing may depend on the data: every stage the policy can reach
        # is recorded and runs at inference on the RoIs that reach it, possibly none.
        tracing = exporting()
        last = fixed_stage(self._policy)
        groups = []
        active = torch.arange(boxes.shape[0], device=boxes.device)
        dense = len(self.predictors)
        for k in range(self.num_stages if last is None else last + 1):
            if 0 < k < dense:
                x, mask_logits, edge_logits = self.predictors[k](x, labels[active])
            elif k >= dense:  # a point stage: x stays the 28 stage's region feature
                mask_logits = refine_at_points(
                    self.point_stages[k - dense],
                    mask_logits,
                    self.stage_points(k),
                    features[self.image_levels[k - 1]],
                    roi5[active],
                    x,
                    labels[active],
                    image_shapes,
                )
            if self.stage_log is not None:
                self.stage_log.append(mask_logits.detach())
            stop = choice[active] == k
            if tracing or bool(stop.any()):
                groups.append((k, active[stop], mask_logits[stop].sigmoid()))
            if k == self.num_stages - 1 or k == last:
                break
            go = choice[active] > k
            if not tracing and not bool(go.any()):
                break
            x, mask_logits, edge_logits, active = x[go], mask_logits[go], edge_logits[go], active[go]
            if k + 1 < dense:
                pooled = self._pool_image_feature(features, k, roi5[active], image_shapes)
                x = self.aggregators[k](x, pooled, mask_logits, edge_logits)

        resolution = torch.tensor(RESOLUTIONS, device=boxes.device)[choice]
        if tracing and len(counts) == 1:  # one image: no split by Python counts
            return [
                {
                    "mask_groups": [(idx, masks) for _, idx, masks in groups],
                    "mask_resolution": resolution,
                    "mask_flops": flops.float(),
                }
            ]
        return [
            {
                "mask_groups": [(idx, masks) for _, idx, masks in image_groups],
                "mask_resolution": res,
                "mask_flops": fl.float(),
            }
            for image_groups, res, fl in zip(
                split_groups(groups, counts), resolution.split(counts), flops.split(counts)
            )
        ]
