"""Resolution policies: which stage each RoI stops at.

- ``fixed-R``: every RoI stops at resolution R (14, 28, 56 or 112).
- ``size``: a box-area rule — side √(w·h) in network-input pixels below 32 → 14, below 96 → 28,
  below 192 → 56, else 112 (the first two thresholds are COCO's small/medium limits).
- ``dynamic``: the Mask Switch Module decides; with a test-time budget below 1.0, the choice
  trades the switch's scores against cost so the mean cost meets the budget (:func:`choose_under_budget`).
"""

from __future__ import annotations

import torch
from torch import Tensor

RESOLUTIONS = (14, 28, 56, 112)
POLICIES = ("dynamic", "fixed-14", "fixed-28", "fixed-56", "fixed-112", "size")
SIZE_THRESHOLDS = (32.0, 96.0, 192.0)


def check_policy(policy: str) -> str:
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {', '.join(POLICIES)}; got {policy!r}")
    return policy


def fixed_stage(policy: str) -> int | None:
    """Stage index of a ``fixed-R`` policy, else None."""
    if policy.startswith("fixed-"):
        return RESOLUTIONS.index(int(policy.split("-")[1]))
    return None


def stages_needed(policy: str) -> int:
    """How many stages a model trained with this policy must build."""
    k = fixed_stage(policy)
    return len(RESOLUTIONS) if k is None else k + 1


def size_rule(boxes: Tensor, thresholds: tuple[float, ...] = SIZE_THRESHOLDS) -> Tensor:
    """Stage index per box from its side √(w·h) (network-input pixels)."""
    wh = (boxes[:, 2:] - boxes[:, :2]).clamp(min=0)
    side = torch.sqrt(wh[:, 0] * wh[:, 1])
    bounds = torch.tensor(thresholds, dtype=side.dtype, device=side.device)
    return torch.bucketize(side, bounds, right=True)


def budget_multiplier(scores: Tensor, costs: Tensor, budget: float, iterations: int = 50) -> float:
    """Smallest λ ≥ 0 such that choosing argmax_k scores_rk − λ·c_k/c_max per RoI keeps the mean
    cost at most ``budget``·max(costs) (bisection; mean cost falls as λ grows). A budget below the
    cheapest stage's share is met as closely as it can be: by that share, every RoI at the
    cheapest stage (callers that take a budget from a user warn about it, see
    :func:`smallest_budget`). A lower budget never gives a costlier mix."""
    if scores.shape[0] == 0:
        return 0.0
    frac = (costs / costs.max()).to(scores.dtype)
    limit = max(budget * float(costs.max()), float(costs.min()))

    def mean_cost(lam: float) -> float:
        return float(costs[torch.argmax(scores - lam * frac, dim=1)].mean())

    if mean_cost(0.0) <= limit:
        return 0.0
    finite = scores[torch.isfinite(scores)]
    spread = float(finite.max() - finite.min()) if finite.numel() else 1.0
    gaps = frac.diff().abs()
    # at this price every RoI's cheapest stage wins by more than any score difference
    hi = (spread + 1.0) / float(gaps[gaps > 0].min()) if bool((gaps > 0).any()) else 1.0
    lo = 0.0
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        if mean_cost(mid) <= limit:
            hi = mid
        else:
            lo = mid
    return hi


def smallest_budget(costs: Tensor) -> float:
    """The lowest reachable budget: the cheapest stage's share of the most expensive one."""
    return float(costs.min() / costs.max())


def choose_under_budget(log_probs: Tensor, costs: Tensor, budget: float, iterations: int = 50) -> Tensor:
    """Stage per RoI so that the mean cost is at most ``budget``·max(costs), losing as little
    of the switch's score (log-probability or negative predicted cost) as possible.

    Lagrangian relaxation: choose argmax_k score_rk − λ·c_k/c_max with the smallest λ ≥ 0 that
    meets the budget (:func:`budget_multiplier`). Below the cheapest stage's share every RoI
    gets the cheapest stage.
    """
    if log_probs.shape[0] == 0:
        return torch.zeros(0, dtype=torch.int64, device=log_probs.device)
    lam = budget_multiplier(log_probs, costs, budget, iterations)
    frac = (costs / costs.max()).to(log_probs.dtype)
    return torch.argmax(log_probs - lam * frac, dim=1)


def score_floor_for_cost(scores: Tensor, gated_cost: float, open_cost: float, target: float) -> float:
    """The score floor (``mask_score_floor``) at which these detections, those under it charged
    ``gated_cost`` and the rest ``open_cost``, cost ``target`` on average — as near as a floor
    placed at one of the scores gets. 0 (no floor) when even ungated they cost no more."""
    n = scores.numel()
    if n == 0 or open_cost <= target or open_cost <= gated_cost:
        return 0.0
    share = min(1.0, (open_cost - target) / (open_cost - gated_cost))
    k = int(round(share * n))
    if k <= 0:
        return 0.0
    ordered = torch.sort(scores.flatten().float()).values
    return 1.0 if k >= n else float(ordered[k])
