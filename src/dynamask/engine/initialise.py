"""Starting weights of a new run: ``model.init_weights`` (the whole model) or
``model.detector_weights`` (all but the mask branch), from a dynamask checkpoint or a
torchvision detection file. A file that does not fit is refused with the differences named."""

from __future__ import annotations

import logging

from ..errors import DynaMaskError
from .build import checkpoint_geometry, checkpoint_mismatches, load_checkpoint

__all__ = ["initialise_weights"]

logger = logging.getLogger("dynamask.train")


def initialise_weights(model, cfg: dict, tv_plan: dict | None, num_classes: int) -> None:
    """Load what ``model.init_weights`` / ``model.detector_weights`` name (``tv_plan``: the
    torchvision file among them, see :func:`~dynamask.engine.build.torchvision_weights_plan`)."""
    for key, detector_only in (("init_weights", False), ("detector_weights", True)):
        if tv_plan is not None and tv_plan["key"] == key:
            _from_torchvision(model, cfg, tv_plan, detector_only)
        elif cfg["model"].get(key):
            _from_checkpoint(model, cfg, key, num_classes, detector_only)


def _from_checkpoint(model, cfg: dict, key: str, num_classes: int, detector_only: bool) -> None:
    path = cfg["model"][key]
    source = load_checkpoint(path)
    problems = checkpoint_mismatches(source, cfg, num_classes, detector_only=detector_only)
    try:
        if problems:
            raise RuntimeError("; ".join(problems))
        if detector_only:
            model.load_detector_state(source["model"])
        else:
            model.load_state_dict(source["model"])
    except RuntimeError as e:
        raise DynaMaskError(
            f"model.{key}: {path} does not fit the configured model: {str(e).splitlines()[0]}"
        ) from None
    logger.info(
        "initialised %s from %s", "the detector (all but the mask branch)" if detector_only else "the model", path
    )
    trained_in = checkpoint_geometry(source)
    if not detector_only and trained_in != model.mask_geometry:
        logger.warning(
            "model.%s: %s was trained in the %r mask geometry; training goes on in %r "
            "(model.mask_geometry), so its masks first land half a pixel off",
            key,
            path,
            trained_in,
            model.mask_geometry,
        )


def _from_torchvision(model, cfg: dict, plan: dict, detector_only: bool) -> None:
    """Backbone, FPN, RPN and box head; torchvision's mask head too for ``init_weights`` with the
    Mask R-CNN head. Logs what was loaded and what starts from its initialisation."""
    from ..models.torchvision_weights import has_mask_head, load_torchvision_detection

    key, path, state = plan["key"], plan["path"], plan["state"]
    with_mask = not detector_only and cfg["model"]["head"] == "maskrcnn" and has_mask_head(state)
    try:
        done = load_torchvision_detection(model, state, path, with_mask_head=with_mask)
    except DynaMaskError as exc:
        raise DynaMaskError(f"model.{key}: {exc}") from None
    parts = "backbone, FPN, RPN, box head" + (" and mask head" if done["mask_head_loaded"] else "")
    logger.info("model.%s: loaded %s from torchvision file %s (%d classes)", key, parts, path, done["num_classes"])
    if done["reinitialised"]:
        logger.info(
            "model.%s: the file has %d classes and the data %d: %s start from initialisation and train",
            key,
            done["num_classes"],
            model.roi_heads.box_predictor.cls_score.out_features,
            ", ".join(done["reinitialised"]),
        )
    if done["mask_head_loaded"] and model.mask_geometry != "torchvision":
        logger.warning(
            "model.%s: torchvision's mask head was trained in the 'torchvision' mask geometry; training "
            "goes on in %r (model.mask_geometry), so its masks first land half a pixel off",
            key,
            model.mask_geometry,
        )
