"""What the browser viewer computes, without any web library: so that it is tested without one.

:class:`Viewer` holds one loaded model (a checkpoint, or an exported ``.onnx`` / ``.ts`` file,
through :class:`dynamask.Predictor`) and turns (image, policy, budget, score threshold) into a
:class:`View`: the overlay coloured by chosen resolution (``dynamask predict``'s colours), the same
head at fixed-112 beside it, a per-instance table, the image's mask GFLOPs and their share of
fixed-112's, the latency of the run, and the detections as COCO results. Bad input is a
:class:`~dynamask.errors.DynaMaskError` with a message meant for the page.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import DynaMaskError
from ..models.policy import POLICIES, RESOLUTIONS, score_floor_for_cost, stages_needed

#: images larger than this on a side are refused (the viewer runs on a CPU, one image at a time)
MAX_SIDE = 4096
#: the policy entry for the score-gated control (fixed-112 above a score floor, 14×14 below)
GATED = "score-gated fixed-112"
#: the budget value that means "no budget"
NO_BUDGET = 1.0
#: overlays of small images are enlarged so that their text stays legible (as `dynamask predict`)
OVERLAY_MIN_SIZE = 512


def default_weights() -> Path:
    """The shipped DynaMask head (it names the shipped detector beside it), or an error that says
    what is missing and what to do, as ``dynamask demo`` does outside a clone."""
    from ..engine.demo import REPO_ROOT, SHIPPED

    folder = REPO_ROOT / "checkpoints"
    needed = [folder / SHIPPED["dynamask"], folder / SHIPPED["detector"]]
    missing = [str(p) for p in needed if not p.is_file()]
    if missing:
        raise DynaMaskError(
            f"the app starts from the shipped checkpoints and these are missing: {', '.join(missing)} "
            f"(run it from a clone of the repository, or give a model: dynamask app --weights FILE; "
            f"checkpoints/README.md has the commands that make the shipped files)"
        )
    return needed[0]


def read_image(path: os.PathLike | str, shown_name: str | None = None) -> torch.Tensor:
    """An uploaded or sample image as a 3×H×W tensor, upright; the size is checked from the header
    before the pixels are decoded, so a huge file is refused without filling memory."""
    from PIL import Image, UnidentifiedImageError

    from ..predictor import load_image_file

    name = shown_name or os.path.basename(os.fspath(path))
    try:
        with Image.open(path) as header:
            width, height = header.size
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise DynaMaskError(f"{name}: not an image this viewer can read ({type(exc).__name__})") from None
    if max(width, height) > MAX_SIDE:
        raise DynaMaskError(
            f"{name}: {width}×{height} px is over the viewer's limit of {MAX_SIDE} px a side; shrink it first"
        )
    try:
        return load_image_file(path)
    except DynaMaskError as exc:
        raise DynaMaskError(f"{name}: the file is damaged or not an image ({str(exc).split(': ', 1)[-1]})") from None


@dataclass
class View:
    """One run as the page shows it."""

    overlay: np.ndarray
    reference: np.ndarray | None  # the same head at fixed-112, None when it has no 112 stage
    rows: list[list]  # shown instances: class, score, resolution, mask MFLOPs
    shown_counts: dict[int, int]  # shown instances per resolution
    detections: int  # every detection the mask branch ran on (the threshold only hides)
    mask_gflops: float  # spent on every detection
    reference_gflops: float | None
    model_seconds: float
    mask_seconds: float | None  # None for exported files (one opaque call)
    policy: str
    budget: float
    score_floor: float | None = None  # the gated control's floor
    coco_results: list[dict] = field(default_factory=list)

    @property
    def share(self) -> float | None:
        """The image's mask GFLOPs as a fraction of the same head at fixed-112."""
        if not self.reference_gflops:
            return None
        return self.mask_gflops / self.reference_gflops


class _MaskBranchClock:
    """Times the mask branch inside the model's forward: its ``forward_infer`` is wrapped on the
    instance, so the model's code is left as it is."""

    def __init__(self, branch):
        self.seconds = 0.0
        inner = branch.forward_infer

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start

        branch.forward_infer = timed


class Viewer:
    """One model for the page. Runs are serialised by a lock (the page's queue does the same for
    requests; the lock also covers direct use from Python)."""

    def __init__(self, weights: os.PathLike | str):
        from ..predictor import Predictor

        self.weights = os.fspath(weights)
        self.name = os.path.basename(self.weights)
        try:
            self.predictor = Predictor(self.weights, score_thresh=0.0, device="cpu")
        except DynaMaskError as exc:
            raise DynaMaskError(f"cannot load the model: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - onnxruntime / torch.jit raise many types on a broken file
            raise DynaMaskError(
                f"cannot load the model: {self.weights}: not a readable checkpoint or exported "
                f"model ({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''})"
            ) from None
        self.exported = self.predictor.runner is not None
        self.class_names = list(self.predictor.class_names)
        self._lock = threading.Lock()
        self._reference_cache: dict[str, tuple] = {}
        branch = None if self.exported else self.predictor.model.mask_branch
        self.stages = getattr(branch, "num_stages", 0)
        self.has_switch = getattr(branch, "switch", None) is not None
        self.lowest_budget = float(branch.smallest_budget()) if self.has_switch else None
        self.home_policy = self.predictor.policy  # what the model is put back to after each run
        self.clock = _MaskBranchClock(branch) if branch is not None else None
        self.policies = self._policies()

    # ------------------------------------------------------------ what the page offers
    def _policies(self) -> list[str]:
        if self.exported or not self.stages:
            return [self.predictor.policy]
        usable = [p for p in POLICIES if stages_needed(p) <= self.stages and (p != "dynamic" or self.has_switch)]
        return usable + ([GATED] if self.has_switch and self.stages == len(RESOLUTIONS) else [])

    @property
    def controls_note(self) -> str | None:
        """Why the policy and budget controls are disabled, or None when they work."""
        if self.exported:
            return (
                f"{self.name} is an exported file: it holds its policy ({self.predictor.policy}) in its graph, and "
                f"the budget dial solves for a price per image in Python, which an exported file cannot; load the "
                f"checkpoint it came from to turn them."
            )
        if not self.stages:
            return "this is a Mask R-CNN head: one 28×28 mask per instance, nothing to switch or budget."
        if not self.has_switch:
            return (
                f"this head was trained as {self.predictor.policy}: it has no Mask Switch, so no budget; "
                f"the policies it can run are listed."
            )
        return None

    @property
    def budget_controls(self) -> bool:
        return self.has_switch and not self.exported

    def describe(self) -> str:
        """One paragraph on the model: file, kind, classes."""
        kind = "exported file" if self.exported else ("DynaMask head" if self.stages else "Mask R-CNN head")
        return (
            f"**Model:** `{self.name}` ({kind}, policy {self.predictor.policy}). "
            f"**Classes ({len(self.class_names)}):** {', '.join(self.class_names)}."
        )

    # ------------------------------------------------------------ running
    def run(
        self,
        image: torch.Tensor,
        image_key: str,
        policy: str = "dynamic",
        budget: float = NO_BUDGET,
        score_thresh: float = 0.5,
    ) -> View:
        """Predict ``image`` with ``policy`` (a :data:`POLICIES` entry or :data:`GATED`) under
        ``budget`` (dynamic and the gated control only) and show the detections scoring at least
        ``score_thresh``; ``image_key`` names the image for the fixed-112 cache."""
        if not 0.0 <= float(score_thresh) <= 1.0:
            raise DynaMaskError(f"score threshold must be in [0, 1], got {score_thresh}")
        if self.exported or not self.stages:
            policy, budget = self.predictor.policy, NO_BUDGET
        elif policy not in self.policies:
            raise DynaMaskError(f"policy {policy!r}: this model offers {', '.join(self.policies)}")
        budget = self._checked_budget(policy, budget)
        with self._lock:
            pred, model_s, mask_s, floor = self._predict(image, policy, budget)
            reference = self._reference(image, image_key)
        return self._view(
            image, pred, reference, policy, budget, float(score_thresh), model_s, mask_s, floor, image_key
        )

    def _checked_budget(self, policy: str, budget: float) -> float:
        budget = float(budget)
        if policy not in ("dynamic", GATED) or not self.has_switch:
            return NO_BUDGET
        if not self.lowest_budget - 1e-6 <= budget <= 1.0:
            raise DynaMaskError(
                f"budget {budget:g} is outside this head's range [{self.lowest_budget:.3f}, 1] (1 = no budget)"
            )
        return max(budget, self.lowest_budget)

    def _forward(self, image: torch.Tensor) -> tuple:
        if self.clock is not None:
            self.clock.seconds = 0.0
        start = time.perf_counter()
        pred = self.predictor.predict(image)
        seconds = time.perf_counter() - start
        return pred, seconds, (self.clock.seconds if self.clock is not None else None)

    def _predict(self, image: torch.Tensor, policy: str, budget: float) -> tuple:
        """(prediction, model s, mask-branch s, gated floor); the model is put back as it was."""
        if self.exported or not self.stages:
            return (*self._forward(image), None)
        model = self.predictor.model
        try:
            if policy != GATED:
                model.policy, model.mask_budget = policy, budget
                return (*self._forward(image), None)
            # the control costs what `dynamic` (at this budget) costs on this image, as in `dynamask demo`
            model.policy, model.mask_budget = "dynamic", budget
            dynamic, _, _ = self._forward(image)
            costs = model.mask_branch.stage_costs(with_switch=False).double()
            target = float(dynamic["mask_flops"].double().mean()) if len(dynamic["scores"]) else 0.0
            floor = score_floor_for_cost(dynamic["scores"], float(costs[0]), float(costs[-1]), target)
            model.policy, model.mask_budget, model.mask_score_floor = "fixed-112", NO_BUDGET, floor
            return (*self._forward(image), floor)
        finally:
            model.mask_score_floor = 0.0
            model.policy, model.mask_budget = self.home_policy, NO_BUDGET

    def _reference(self, image: torch.Tensor, image_key: str) -> dict | None:
        """The same head at fixed-112 (cached per image: it does not depend on the controls)."""
        if self.exported or self.stages < len(RESOLUTIONS):
            return None
        if image_key not in self._reference_cache:
            model = self.predictor.model
            try:
                model.policy = "fixed-112"
                pred, _, _ = self._forward(image)
            finally:
                model.policy = self.home_policy
            self._reference_cache = {image_key: pred}  # one image at a time: the page shows one
        return self._reference_cache[image_key]

    def _view(self, image, pred, reference, policy, budget, score_thresh, model_s, mask_s, floor, image_key) -> View:
        from ..visualize import draw_overlay

        pixels = (image.permute(1, 2, 0).numpy() * 255.0).round().clip(0, 255).astype(np.uint8)
        overlay = draw_overlay(pixels, pred, self.class_names, score_thresh, min_display_size=OVERLAY_MIN_SIZE)
        ref_overlay = (
            draw_overlay(pixels, reference, self.class_names, score_thresh, min_display_size=OVERLAY_MIN_SIZE)
            if reference is not None
            else None
        )
        shown = (pred["scores"] >= score_thresh).nonzero().flatten().tolist()
        counts = {r: 0 for r in RESOLUTIONS}
        rows = []
        flops = pred.get("mask_flops")
        for i in shown:
            res = int(pred["mask_resolution"][i]) if "mask_resolution" in pred else 0
            counts[res] = counts.get(res, 0) + 1
            label = int(pred["labels"][i])
            name = self.class_names[label - 1] if 1 <= label <= len(self.class_names) else f"class {label}"
            rows.append(
                [
                    len(rows) + 1,
                    name,
                    round(float(pred["scores"][i]), 3),
                    f"{res}×{res}",
                    round(float(flops[i]) / 1e6, 1) if flops is not None else None,
                ]
            )
        total = float(flops.double().sum()) / 1e9 if flops is not None else float("nan")
        ref_total = (
            float(reference["mask_flops"].double().sum()) / 1e9
            if reference is not None and "mask_flops" in reference
            else None
        )
        return View(
            overlay=overlay,
            reference=ref_overlay,
            rows=rows,
            shown_counts=counts,
            detections=int(len(pred["scores"])),
            mask_gflops=total,
            reference_gflops=ref_total,
            model_seconds=model_s,
            mask_seconds=mask_s,
            policy=policy,
            budget=budget,
            score_floor=floor,
            coco_results=self._coco(pred, score_thresh, image_key),
        )

    def _coco(self, pred: dict, score_thresh: float, image_key: str) -> list[dict]:
        """The shown detections as COCO results, as ``dynamask predict`` writes them."""
        from ..engine.evaluate import predictions_to_coco_results

        cat_ids = self.predictor.cat_ids
        entries = predictions_to_coco_results(
            pred, 1, cat_ids, score_thresh=score_thresh, extra={"file_name": image_key}
        )
        for e in entries:
            e["category_name"] = self.class_names[cat_ids.index(e["category_id"])]
        return entries
