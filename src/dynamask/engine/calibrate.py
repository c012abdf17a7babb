"""Held-out calibration of the confidence-aware switch (``dynamask calibrate``).

Training sees positive proposals only — every one a real object — and prices compute (λ, the
switch's ``price``) so that *they* meet ``model.mask_budget_target``. At test time the mask
branch runs on the detections the model returns, most of them false at a low score threshold.
The cost switch weights each detection's predicted mask error by P(real object | detector score)
(:meth:`~dynamask.models.mask_switch.CostSwitch.real_probability`), so the budget has to be
re-met on that population. On held-out images (never the validation set: ``dynamask shapes
--seed 1`` makes such a split) this module

1. fits ``score_map``: the fraction of detections that match a ground-truth object (box IoU ≥ 0.5,
   same class, each object matched once, best score first — what COCO AP counts as a true
   positive) around each score knot, smoothed towards the identity and made monotone; then
2. sets ``price`` to the smallest λ at which the switch's own choices over all those detections
   cost, on average, ``mask_budget_target`` of the full path (bisection,
   :func:`~dynamask.models.policy.budget_multiplier`). A target above what the head spends
   unconstrained cannot be met: λ = 0 and the report says so.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from ..errors import DynaMaskError
from ..progress import progress_bar

__all__ = ["calibrate_switch", "fit_score_map", "CALIBRATION_KEYS"]

logger = logging.getLogger("dynamask.calibrate")

#: state-dict keys (under the mask branch's switch) that a calibration writes
CALIBRATION_KEYS = ("switch.price", "switch.score_map", "switch.uses_score")


def _pool_adjacent_violators(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Non-decreasing least-squares fit of ``values`` (isotonic regression, pool adjacent violators)."""
    blocks = [[float(v), float(w), 1] for v, w in zip(values, weights)]
    out: list = []
    for b in blocks:
        out.append(b)
        while len(out) > 1 and out[-2][0] > out[-1][0]:
            v2, w2, n2 = out.pop()
            v1, w1, n1 = out.pop()
            w = w1 + w2
            out.append([(v1 * w1 + v2 * w2) / w if w > 0 else (v1 + v2) / 2, w, n1 + n2])
    return np.concatenate([[v] * n for v, _, n in out])


def fit_score_map(scores: np.ndarray, real: np.ndarray, knots: np.ndarray, prior_weight: float = 2.0) -> np.ndarray:
    """P(real | score) at each knot: the real fraction of detections within half a knot spacing,
    smoothed towards the knot's own value with ``prior_weight`` pseudo-detections (so an empty
    bin keeps the identity), then made non-decreasing (isotonic)."""
    half = 0.5 * float(knots[1] - knots[0])
    est, weight = [], []
    for k in knots:
        near = np.abs(scores - k) <= half
        n = int(near.sum())
        est.append((float(real[near].sum()) + prior_weight * float(k)) / (n + prior_weight))
        weight.append(n + prior_weight)
    return np.clip(_pool_adjacent_violators(np.array(est), np.array(weight)), 0.0, 1.0)


def _match(
    boxes: torch.Tensor,
    labels: torch.Tensor,
    scores: torch.Tensor,
    gt_boxes: torch.Tensor,
    gt_labels: torch.Tensor,
    iou: float = 0.5,
) -> np.ndarray:
    """True-positive flag per detection, greedy by score as COCO matches at one IoU threshold."""
    from torchvision.ops import box_iou

    real = np.zeros(boxes.shape[0], dtype=bool)
    if boxes.shape[0] == 0 or gt_boxes.shape[0] == 0:
        return real
    overlaps = box_iou(boxes.float(), gt_boxes.float())
    overlaps[labels[:, None] != gt_labels[None, :]] = 0.0
    taken = torch.zeros(gt_boxes.shape[0], dtype=torch.bool)
    for i in torch.argsort(scores, descending=True).tolist():
        row = overlaps[i].clone()
        row[taken] = 0.0
        j = int(row.argmax())
        if float(row[j]) >= iou:
            taken[j] = True
            real[i] = True
    return real


def calibrate_switch(
    model,
    dataset,
    target: float | None = None,
    device: Any = "cpu",
    max_images: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Calibrate ``model``'s cost switch on ``dataset`` (held-out, COCO-format, no transforms) in
    place; returns what was measured and set. ``target`` defaults to the head's training
    ``budget_target``."""
    head = _cost_switch_head(model)
    target = float(head.budget_target if target is None else target)
    n = len(dataset) if max_images is None else min(len(dataset), int(max_images))
    outputs, scores, real = _switch_outputs_on_detections(model, head, dataset, n, torch.device(device), progress)
    switch = head.switch
    knots = switch.SCORE_KNOTS.numpy()
    score_map = fit_score_map(scores, real, knots)
    with torch.no_grad():
        switch.score_map.copy_(torch.from_numpy(score_map).to(switch.score_map))
        switch.uses_score.fill_(1)
    shares = _set_price(head, outputs, scores, target)
    lowest, unconstrained, achieved = shares["cheapest_share"], shares["unconstrained_share"], shares["achieved"]
    reachable = lowest <= target <= unconstrained
    report = {
        "target": target,
        "achieved": achieved,
        "reachable": reachable,
        "cheapest_share": lowest,
        "unconstrained_share": unconstrained,
        "price_before": shares["price_before"],
        "price": shares["price"],
        "score_map": [round(float(v), 4) for v in score_map],
        "score_knots": [round(float(k), 2) for k in knots],
        "images": n,
        "detections": int(scores.shape[0]),
        "real_fraction": float(real.mean()),
    }
    if head.refinement == "points":  # the stage costs the price was set against depend on it
        report["refinement_points"] = head.refinement_points
    if not reachable:
        logger.warning(
            "calibrate: target %.3f is outside what this head reaches on these detections "
            "(%.3f with every detection at 14, %.3f unconstrained); achieved %.3f",
            target,
            lowest,
            unconstrained,
            achieved,
        )
    return report


def _cost_switch_head(model):
    """``model``'s mask branch, refused unless it is a DynaMask head with the cost switch (the one
    switch with a price and a score map)."""
    from ..models.dynamask_head import DynaMaskHead
    from ..models.mask_switch import CostSwitch

    head = model.mask_branch
    if not isinstance(head, DynaMaskHead) or not isinstance(head.switch, CostSwitch):
        raise DynaMaskError(
            "calibrate: only a DynaMask head with the cost switch (model.switch=cost, "
            "policy dynamic) has a price and a score map to calibrate"
        )
    return head


def _switch_outputs_on_detections(
    model, head, dataset, n: int, device: torch.device, progress: bool
) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Runs ``model`` (evaluation mode, dynamic policy, full budget) over the first ``n`` images of
    ``dataset``; per detection: the switch's outputs (D×K), the detector score and whether it
    matches a ground-truth object. The model's mode and the head's settings are restored after."""
    saved = (model.training, head.policy, head.mask_budget, head.switch_log)
    model.to(device).eval()
    head.policy, head.mask_budget, head.switch_log = "dynamic", 1.0, []
    all_scores, all_real = [], []
    try:
        with torch.no_grad(), progress_bar(n, "calibrate", enabled=progress) as bar:
            for i in range(n):
                bar.update(1)
                image, target_dict = dataset[i]
                image = torch.as_tensor(image).float().to(device)
                out = model([image])[0]
                gt_boxes = torch.as_tensor(target_dict["boxes"]).reshape(-1, 4)
                all_real.append(
                    _match(
                        out["boxes"].cpu(),
                        out["labels"].cpu(),
                        out["scores"].cpu(),
                        gt_boxes,
                        torch.as_tensor(target_dict["labels"]),
                    )
                )
                all_scores.append(out["scores"].cpu().numpy())
        log = head.switch_log
    finally:
        model.train(saved[0])
        head.policy, head.mask_budget, head.switch_log = saved[1], saved[2], saved[3]
    if not log or sum(o.shape[0] for o, _ in log) == 0:
        raise DynaMaskError("calibrate: the model returned no detection on the held-out images")
    return torch.cat([o for o, _ in log]).cpu(), np.concatenate(all_scores), np.concatenate(all_real)


def _set_price(head, outputs: torch.Tensor, scores: np.ndarray, target: float) -> dict[str, float]:
    """Sets the switch's ``price`` to the smallest λ at which its own choices over these detections
    (outputs weighted by P(real | score), so the score map must be set first) cost ``target`` of
    the full path on average; returns the shares it reaches (every detection at 14, unconstrained,
    achieved) and the price before and after."""
    from ..models.policy import budget_multiplier

    switch = head.switch
    costs = head.stage_costs(with_switch=True).double().cpu()
    fractions = (costs / costs[-1]).float()
    with torch.no_grad():
        p = switch.real_probability(torch.from_numpy(scores).float())
        weighted = -(p[:, None] * outputs.float())
        lowest = float(fractions[0])
        unconstrained = float(fractions[torch.argmax(weighted, dim=1)].mean())
        price_before = float(switch.price)
        lam = budget_multiplier(weighted, costs.float(), target)
        switch.price.fill_(lam)
        achieved = float(
            fractions[
                torch.argmax(switch.scores(outputs.float(), fractions, torch.from_numpy(scores).float()), dim=1)
            ].mean()
        )
    return {
        "cheapest_share": lowest,
        "unconstrained_share": unconstrained,
        "achieved": achieved,
        "price_before": price_before,
        "price": lam,
    }
