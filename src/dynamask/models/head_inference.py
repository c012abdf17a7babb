"""Inference of the DynaMask head: one resolution per detection, and only the stages it needs.

Stage 0 and the switch run for every detection; the policy (with the budget dial, the score
floor and the choice hook) picks each one's stage; stage k then runs only for the detections
whose chosen resolution is at least R_k — the skipped stages are really not computed — and each
mask is handed back at its own resolution, grouped by stage, for the batched paste.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .mask_switch import SwitchInput
from .policy import RESOLUTIONS, choose_under_budget, fixed_stage, size_rule
from .roi_utils import exporting, rois_with_batch_index, split_groups


class InferenceMixin:
    """The inference pass of :class:`~dynamask.models.dynamask_head.DynaMaskHead` (mixed into it;
    it reads the head's parts, policy and experiment hooks)."""

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
        """Per image: the masks grouped by stage (RoI indices, probabilities at that stage's
        resolution), each detection's mask resolution and the mask FLOPs charged for it."""
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
        flops = self._charged_flops(choice, detection_scores, boxes.device)
        groups = self._run_chosen_stages(choice, features, roi5, image_shapes, labels, x, mask_logits, edge_logits)
        resolution = torch.tensor(RESOLUTIONS, device=boxes.device)[choice]
        if exporting() and len(counts) == 1:  # one image: no split by Python counts
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

    def _charged_flops(self, choice: Tensor, detection_scores: Tensor | None, device: torch.device) -> Tensor:
        """Per RoI, the cumulative cost of its chosen stage (with the switch under ``dynamic``; a
        detection the score floor gated never ran the switch and pays stage 0 alone)."""
        flops = self.stage_costs(with_switch=self._policy == "dynamic").to(device)[choice]
        gated = self.gated(detection_scores)
        if gated is not None:  # a gated detection never ran the switch
            flops = torch.where(gated, self.stage_costs(with_switch=False).to(flops)[0], flops)
        return flops

    def _run_chosen_stages(
        self,
        choice: Tensor,
        features: dict[str, Tensor],
        roi5: Tensor,
        image_shapes,
        labels: Tensor,
        x: Tensor,
        mask_logits: Tensor,
        edge_logits: Tensor,
    ) -> list[tuple[int, Tensor, Tensor]]:
        """From stage 0's outputs, stage k for the RoIs whose choice is at least k; (k, RoI indices,
        mask probabilities) for each stage some RoI stops at."""
        # While exporting (tracing) nothing may depend on the data: every stage the policy can reach
        # is recorded and runs at inference on the RoIs that reach it, possibly none.
        tracing = exporting()
        last = fixed_stage(self._policy)
        groups = []
        active = torch.arange(roi5.shape[0], device=roi5.device)
        dense = len(self.predictors)
        for k in range(self.num_stages if last is None else last + 1):
            if 0 < k < dense:
                x, mask_logits, edge_logits = self.predictors[k](x, labels[active])
            elif k >= dense:  # a point stage: x stays the 28 stage's region feature
                mask_logits = self._refine_point_stage(
                    k, mask_logits, features, roi5[active], x, labels[active], image_shapes
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
        return groups
