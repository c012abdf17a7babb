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
from .flops import conv2d_flops, roi_align_flops
from .geometry import MaskRoIPool, check_geometry
from .mask_switch import MaskSwitch
from .policy import (RESOLUTIONS, SIZE_THRESHOLDS, check_policy, choose_under_budget, fixed_stage, smallest_budget,
                     size_rule, stages_needed)
from .rfpn import FeatureAggregation, StagePredictor, _init_conv
from .roi_utils import level_scale, rois_with_batch_index, split_groups

# Widths of the region feature at 14, 28, 56, 112 and of the reduced image feature pooled at
# 14, 28, 56. Chosen so that each further stage costs about as much as everything before it:
# stopping early saves most of the work (see README, "Cost per stage").
DEFAULT_WIDTHS = (96, 64, 48, 32)
DEFAULT_REDUCED = (32, 32, 16)


def warn_unreachable_budget(key: str, value: float, lowest: float) -> None:
    """One warning for a budget below what stopping every instance at 14×14 costs."""
    warnings.warn(f"{key}={value:g} is below the cheapest stage's share of the full mask path; "
                  f"clamped to {lowest:.4f}, the smallest reachable value (every instance at 14×14)",
                  UserWarning, stacklevel=4)  # past the property setter and nn.Module.__setattr__


class DynaMaskHead(nn.Module):
    def __init__(
        self,
        num_classes: int,
        policy: str = "dynamic",
        in_channels: int = 256,
        widths: tuple[int, ...] = DEFAULT_WIDTHS,
        reduced_channels: tuple[int, ...] = DEFAULT_REDUCED,
        fam: str = "deform",
        featmap_names: tuple[str, ...] = ("0", "1", "2", "3"),
        image_levels: tuple[str, ...] = ("2", "1", "0"),
        stage_loss_weights: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0),
        edge_loss_weight: float = 1.0,
        select_loss_weight: float = 0.0,
        budget_target: float = 0.4,
        budget_weight: float = 0.0,
        balance_weight: float = 0.0,
        switch_cost_weight: float = 1.0,
        gumbel_tau: float = 0.5,
        size_thresholds: tuple[float, ...] = SIZE_THRESHOLDS,
        sampling_ratio: int = 2,
        mask_geometry: str = "exact",
    ):
        super().__init__()
        check_policy(policy)
        self.num_stages = stages_needed(policy)
        self.resolutions = RESOLUTIONS[: self.num_stages]
        self.in_channels = in_channels
        self.sampling_ratio = sampling_ratio
        self.image_levels = tuple(image_levels)
        self.stage_loss_weights = tuple(stage_loss_weights)
        self.edge_loss_weight = edge_loss_weight
        self.select_loss_weight = select_loss_weight
        self.budget_weight = budget_weight
        self.balance_weight = balance_weight
        self.switch_cost_weight = switch_cost_weight
        self.gumbel_tau = gumbel_tau
        self.size_thresholds = tuple(size_thresholds)

        c0 = widths[0]
        self.roi_pool = MaskRoIPool(list(featmap_names), RESOLUTIONS[0], sampling_ratio, mask_geometry)
        self.shared = nn.Sequential(
            _init_conv(nn.Conv2d(in_channels, c0, 3, padding=1)), nn.ReLU(inplace=True),
            _init_conv(nn.Conv2d(c0, c0, 3, padding=1)), nn.ReLU(inplace=True),
        )
        last = len(RESOLUTIONS) - 1
        self.predictors = nn.ModuleList(
            StagePredictor(widths[k], num_classes if k < last else 1, refine=k > 0)
            for k in range(self.num_stages)
        )
        self.aggregators = nn.ModuleList(
            FeatureAggregation(widths[k], in_channels, reduced_channels[k], widths[k + 1], fam, sampling_ratio)
            for k in range(self.num_stages - 1)
        )
        self.switch = MaskSwitch(c0, num_choices=len(RESOLUTIONS)) if policy == "dynamic" else None
        # The switch predicts each stage's selection cost; a RoI stops at argmin_k cost_k + λ·F_k/F_max.
        # λ, the price of compute that met the budget target in training, is a running mean kept here.
        self.register_buffer("switch_lambda", torch.zeros(()))
        self.register_buffer("switch_lambda_updates", torch.zeros((), dtype=torch.int64))
        self._policy = policy
        self.mask_budget = 1.0
        self.budget_target = budget_target  # checked against the stage costs, which exist now

    #: scale from (predicted cost + λ·F) differences to the Gumbel-softmax logits in training
    COST_TEMPERATURE = 0.05

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        if self.switch is not None and f"{prefix}switch_lambda" not in state_dict:
            # A checkpoint from before the switch predicted costs: its outputs were logits.
            # Negated they rank the stages the same way, so with λ = 0 it chooses as it did.
            for name in ("fc2.weight", "fc2.bias"):
                key = f"{prefix}switch.{name}"
                if key in state_dict:
                    state_dict[key] = -state_dict[key]
        # the λ buffers are newer than some checkpoints (with or without a switch)
        state_dict.setdefault(f"{prefix}switch_lambda", torch.zeros(()))
        state_dict.setdefault(f"{prefix}switch_lambda_updates", torch.zeros((), dtype=torch.int64))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _update_lambda(self, lam: float) -> None:
        with torch.no_grad():
            if int(self.switch_lambda_updates) == 0:
                self.switch_lambda.fill_(lam)
            else:
                self.switch_lambda.mul_(0.98).add_(0.02 * lam)
            self.switch_lambda_updates.add_(1)

    def switch_scores(self, predicted_costs: Tensor) -> Tensor:
        """Higher is better: −(predicted cost + λ·F_k/F_max), N×K."""
        fractions = self.stage_costs(with_switch=True).to(predicted_costs.device)
        fractions = (fractions / fractions[-1]).to(predicted_costs.dtype)
        return -(predicted_costs + self.switch_lambda.to(predicted_costs.dtype) * fractions)

    # ----------------------------------------------------------------- geometry, policy, costs
    @property
    def mask_geometry(self) -> str:
        """``"exact"`` or ``"torchvision"`` (see geometry.py): the shared RoI feature and the targets
        follow it; the paste follows ``DynaMaskRCNN.mask_geometry``, which sets both."""
        return self.roi_pool.geometry

    @mask_geometry.setter
    def mask_geometry(self, geometry: str) -> None:
        self.roi_pool.geometry = check_geometry(geometry)

    @property
    def policy(self) -> str:
        return self._policy

    @policy.setter
    def policy(self, policy: str) -> None:
        check_policy(policy)
        if stages_needed(policy) > self.num_stages:
            raise ValueError(f"policy {policy!r} needs {stages_needed(policy)} stages; this head was "
                             f"built with {self.num_stages} (up to {self.resolutions[-1]}×{self.resolutions[-1]})")
        if policy == "dynamic" and self.switch is None:
            raise ValueError("policy 'dynamic' needs the Mask Switch Module; this head was built without it "
                             "(build the model with policy='dynamic')")
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
        increments = [shared] + [
            self.aggregators[k - 1].flops(RESOLUTIONS[k - 1]) + self.predictors[k].flops(RESOLUTIONS[k])
            for k in range(1, self.num_stages)
        ]
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
    def _pool_image_feature(self, features: dict[str, Tensor], stage: int, rois: Tensor,
                            image_shapes: list[tuple[int, int]], reduce_first: bool = False) -> Tensor:
        """RoIAlign of the FPN level that matches this stage (P4 at 14, P3 at 28, P2 at 56) at
        that level's true scale; with ``reduce_first`` the map is reduced to few channels first."""
        feature = features[self.image_levels[stage]]
        if reduce_first:
            feature = self.aggregators[stage].reduce_image_feature(feature)
        r = RESOLUTIONS[stage]
        return roi_align(feature, rois.to(feature.dtype), (r, r), spatial_scale=level_scale(feature, image_shapes),
                         sampling_ratio=self.sampling_ratio, aligned=True)

    def _zero_losses(self, reference: Tensor) -> dict[str, Tensor]:
        zero = sum(p.sum() for p in self.parameters()) * 0.0 + reference.sum() * 0.0
        keys = [f"loss_mask_{r}" for r in self.resolutions] + ["loss_mask_edge"]
        if self._policy == "dynamic":
            keys += ["loss_mask_select", "loss_mask_budget", "loss_mask_switch"] + (["loss_mask_balance"] if self.balance_weight > 0 else [])
        return {k: zero for k in keys}

    # ---------------------------------------------------------------------------- training
    def forward_train(self, features: dict[str, Tensor], rois: list[Tensor], image_shapes,
                      gt_masks: list[Tensor], gt_labels: list[Tensor], matched_idxs: list[Tensor]) -> dict[str, Tensor]:
        labels = torch.cat([gl[idx] for gl, idx in zip(gt_labels, matched_idxs)])
        x = self.shared(self.roi_pool(features, rois, image_shapes))
        if labels.numel() == 0:
            return self._zero_losses(x)
        boxes = torch.cat(rois)
        roi5 = rois_with_batch_index(rois)
        finest = RESOLUTIONS[-1]
        targets = L.downsample_targets(
            L.matched_mask_targets(gt_masks, rois, matched_idxs, finest, self.mask_geometry), RESOLUTIONS)

        losses: dict[str, Tensor] = {}
        edge_loss = x.new_zeros(())
        stage_logits = []
        region0 = x
        for k, r in enumerate(self.resolutions):
            x, mask_logits, edge_logits = self.predictors[k](x, labels)
            if k == 0:
                mask0, edge0 = mask_logits, edge_logits
            stage_logits.append(mask_logits)
            w = self.stage_loss_weights[k]
            losses[f"loss_mask_{r}"] = w * L.mask_bce(mask_logits, targets[r])
            edge_loss = edge_loss + w * L.mask_bce(edge_logits, L.edge_map(targets[r]))
            if k + 1 < self.num_stages:
                pooled = self._pool_image_feature(features, k, roi5, image_shapes, reduce_first=True)
                x = self.aggregators[k](x, pooled, mask_logits, edge_logits, image_reduced=True)
        losses["loss_mask_edge"] = self.edge_loss_weight * edge_loss

        if self._policy == "dynamic":
            predicted = self.switch(region0.detach(), mask0.detach(), edge0.detach(), boxes).float()
            costs = L.selection_costs(stage_logits, targets[finest], boxes)
            fractions = self.stage_costs(with_switch=True).to(predicted.device)
            fractions = (fractions / fractions[-1]).float()
            # λ: the price at which the switch's *own* choices on this batch meet the budget target
            # (priced on the true costs instead, its smoother predictions crossed to the fine
            # stages too rarely and used half the budget)
            self._update_lambda(L.selection_multiplier(predicted.detach(), fractions, self.budget_target))
            switch_logits = self.switch_scores(predicted) / self.COST_TEMPERATURE
            # Straight-through Gumbel-softmax: one-hot forward, soft gradient; the noise is drawn
            # on the logits' own device (CPU and CUDA alike).
            selection = F.gumbel_softmax(switch_logits, tau=self.gumbel_tau, hard=True)
            losses["loss_mask_select"] = self.select_loss_weight * L.selection_loss(selection, costs)
            losses["loss_mask_budget"] = self.budget_weight * L.budget_loss(selection, fractions, self.budget_target)
            losses["loss_mask_switch"] = self.switch_cost_weight * L.switch_cost_loss(predicted, costs)
            if self.balance_weight > 0:
                losses["loss_mask_balance"] = self.balance_weight * L.balance_loss(switch_logits.softmax(dim=1))
        return losses

    # --------------------------------------------------------------------------- inference
    def choose_stages(self, region0: Tensor, mask0: Tensor, edge0: Tensor, boxes: Tensor,
                      counts: list[int]) -> Tensor:
        """Stage index per RoI under the current policy (and, for dynamic, the budget dial)."""
        n = boxes.shape[0]
        k = fixed_stage(self._policy)
        if k is not None:
            return torch.full((n,), k, dtype=torch.int64, device=boxes.device)
        if self._policy == "size":
            return size_rule(boxes, self.size_thresholds).clamp(max=self.num_stages - 1)
        scores = self.switch_scores(self.switch(region0, mask0, edge0, boxes).float())
        if self.mask_budget >= 1.0:
            return scores.argmax(dim=1)
        costs = self.stage_costs(with_switch=True).to(scores.device)
        return torch.cat([choose_under_budget(s, costs, self.mask_budget) for s in scores.split(counts)])

    def forward_infer(self, features: dict[str, Tensor], boxes_per_image: list[Tensor],
                      labels_per_image: list[Tensor], image_shapes) -> list[dict]:
        counts = [b.shape[0] for b in boxes_per_image]
        boxes = torch.cat(boxes_per_image)
        labels = torch.cat(labels_per_image)
        roi5 = rois_with_batch_index(boxes_per_image)
        x = self.shared(self.roi_pool(features, boxes_per_image, image_shapes))
        x, mask_logits, edge_logits = self.predictors[0](x, labels)
        choice = self.choose_stages(x, mask_logits, edge_logits, boxes, counts)
        flops = self.stage_costs(with_switch=self._policy == "dynamic").to(boxes.device)[choice]

        groups = []
        active = torch.arange(boxes.shape[0], device=boxes.device)
        for k in range(self.num_stages):
            if k > 0:
                x, mask_logits, edge_logits = self.predictors[k](x, labels[active])
            stop = choice[active] == k
            if bool(stop.any()):
                groups.append((k, active[stop], mask_logits[stop].sigmoid()))
            go = choice[active] > k
            if not bool(go.any()):
                break
            x, mask_logits, edge_logits, active = x[go], mask_logits[go], edge_logits[go], active[go]
            pooled = self._pool_image_feature(features, k, roi5[active], image_shapes)
            x = self.aggregators[k](x, pooled, mask_logits, edge_logits)

        resolution = torch.tensor(RESOLUTIONS, device=boxes.device)[choice]
        return [
            {"mask_groups": [(idx, masks) for _, idx, masks in image_groups],
             "mask_resolution": res, "mask_flops": fl.float()}
            for image_groups, res, fl in zip(split_groups(groups, counts), resolution.split(counts), flops.split(counts))
        ]
