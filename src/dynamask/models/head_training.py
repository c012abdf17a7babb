"""Training of the DynaMask head: deep supervision of every stage, and the switch's losses.

Every stage runs on every positive RoI and is supervised at its own resolution (mask BCE plus
the edge BCE of its outline), weighted by ``stage_loss_weights``. Under the dynamic policy the
switch is trained too: the cost switch regresses each stage's selection cost and prices compute
(λ) so that its own choices meet the budget target; the authors' switch learns from a
straight-through Gumbel-softmax selection. Point stages are supervised at sampled points
instead (point_stages.py); their dense stages and the switch go through the losses here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from . import losses as L
from .mask_switch import SwitchInput
from .policy import RESOLUTIONS
from .roi_utils import rois_with_batch_index


class TrainingMixin:
    """The training pass of :class:`~dynamask.models.dynamask_head.DynaMaskHead` (mixed into it;
    it reads the head's parts and loss weights)."""

    #: cost switch: scale from (predicted cost + λ·F) differences to Gumbel-softmax logits in training
    COST_TEMPERATURE = 0.05

    def forward_train(
        self,
        features: dict[str, Tensor],
        rois: list[Tensor],
        image_shapes,
        gt_masks: list[Tensor],
        gt_labels: list[Tensor],
        matched_idxs: list[Tensor],
    ) -> dict[str, Tensor]:
        """The mask losses of the positive ``rois`` (and the switch's, under ``dynamic``): every
        stage dense, or the dense stages and then the point stages (``refinement="points"``)."""
        labels = torch.cat([gl[idx] for gl, idx in zip(gt_labels, matched_idxs)])
        x = self.shared(self.roi_pool(features, rois, image_shapes))
        if labels.numel() == 0:
            return self._zero_losses(x)
        if self.refinement == "points":
            return self._forward_train_points(features, rois, image_shapes, gt_masks, matched_idxs, labels, x)
        return self._forward_train_dense(features, rois, image_shapes, gt_masks, matched_idxs, labels, x)

    def _forward_train_dense(
        self,
        features: dict[str, Tensor],
        rois: list[Tensor],
        image_shapes,
        gt_masks: list[Tensor],
        matched_idxs: list[Tensor],
        labels: Tensor,
        x: Tensor,
    ) -> dict[str, Tensor]:
        """Training with dense stages only: each stage against its own resolution's targets (all
        downsampled from one 112×112 target); the switch as its kind is trained."""
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

    def _zero_losses(self, reference: Tensor) -> dict[str, Tensor]:
        """Every loss key the head reports, at zero but connected to every parameter (a batch
        without positive RoIs)."""
        zero = sum(p.sum() for p in self.parameters()) * 0.0 + reference.sum() * 0.0
        keys = [f"loss_mask_{r}" for r in self.resolutions] + ["loss_mask_edge"]
        if self._policy == "dynamic":
            keys += ["loss_mask_budget"] + (["loss_mask_balance"] if self.balance_weight > 0 else [])
            if self.switch_kind == "cost":
                keys += ["loss_mask_select", "loss_mask_switch"]
            elif self.paper_signal == "selection_cost":
                keys += ["loss_mask_select"]
        return {k: zero for k in keys}

    # ------------------------------------------------------------------------- dense stages
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

    def stage_edge_losses(self, edge_logits: list[Tensor], targets: dict[int, Tensor], weighted: bool = True) -> Tensor:
        """Per RoI and stage, the edge BCE against that stage's own target (N×K) — the signal the
        authors' switch is trained on — times the stage loss weights unless ``weighted=False``."""
        raw = torch.stack(
            [L.per_roi_bce(e, L.edge_map(targets[r])) for e, r in zip(edge_logits, self.resolutions)], dim=1
        )
        if not weighted:
            return raw
        return raw * torch.tensor(self.stage_loss_weights[: self.num_stages], device=raw.device, dtype=raw.dtype)

    # ------------------------------------------------------------------------------ switch
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
