"""What running a trained model needs: a checkpoint read into a model, a device, a policy.

This is the one home of inference's plumbing, shared by :class:`dynamask.predictor.Predictor`,
evaluation, prediction, the demo, export and the CLI. Data flows one way:
``dynamask.models`` ← ``dynamask.inference`` ← ``dynamask.engine`` / ``dynamask.cli``; this module
imports nothing from :mod:`dynamask.engine`, so a predictor never drags in training, and
training reads checkpoints through the very code that serves them.

Checkpoint format
-----------------
A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so it loads with
``torch.load(weights_only=True)``: ``model`` (state dict), ``config`` (the resolved config),
``hyper_parameters`` (:func:`hyper_parameters`), ``class_names``, ``cat_ids`` (label i+1 ↔ COCO
category id cat_ids[i]), ``num_classes``, ``iteration``, ``versions``, and for resuming
``optimizer``, ``scheduler``, ``rng``. A *head* checkpoint holds only the mask branch and names
the detector checkpoint it was trained on (``detector``, ``detector_sha256``). Writing one is
training's business (:func:`dynamask.engine.build.save_checkpoint`).

Models are imported inside the functions that build them, so that importing this module (and
so the evaluation code) stays light.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from typing import Any

import torch

from .errors import DynaMaskError

__all__ = [
    "ARCHITECTURE_KEYS",
    "DETECTOR_ARCHITECTURE_KEYS",
    "LEGACY_MASK_GEOMETRY",
    "MASK_BRANCH_PREFIX",
    "apply_policy",
    "checkpoint_geometry",
    "checkpoint_refinement",
    "checkpoint_mismatches",
    "file_sha256",
    "hyper_parameters",
    "load_checkpoint",
    "model_from_checkpoint",
    "resolve_device",
    "with_defaults",
]

#: state-dict prefix of the mask branch (everything else is the detector)
MASK_BRANCH_PREFIX = "roi_heads.mask_branch."

#: model config keys that decide the shapes of the weights (and so whether a checkpoint fits)
ARCHITECTURE_KEYS = (
    "head",
    "backbone",
    "fam",
    "fpn_channels",
    "box_representation_size",
    "head_widths",
    "head_reduced_channels",
    "maskrcnn_head_channels",
    "switch",
    "refinement",
)
#: the subset the detector (all but the mask branch) depends on
DETECTOR_ARCHITECTURE_KEYS = ("backbone", "fpn_channels", "box_representation_size")

#: the refinement of checkpoints that record none: they predate point stages and are dense
LEGACY_REFINEMENT = "dense"

#: the geometry of checkpoints that record none: they predate the key and were trained with it
LEGACY_MASK_GEOMETRY = "torchvision"


# --------------------------------------------------------------------------
# device and policy
# --------------------------------------------------------------------------
def resolve_device(device: Any) -> torch.device:
    """``device`` as a :class:`torch.device`; ``None`` or ``""`` picks CUDA when available, else
    the CPU. A malformed name or CUDA asked for without CUDA raises :class:`DynaMaskError`
    here, before any model is moved, with the name the user gave."""
    if device is None or device == "":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise DynaMaskError(f"device {device!r}: {exc}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DynaMaskError(f"device {device!r} requested but CUDA is not available")
    return dev


def apply_policy(model, policy: str | None, budget: float | None) -> None:
    """Set a loaded model's resolution ``policy`` and test-time mask ``budget`` (``None`` leaves
    either as it is). The model refuses what it cannot run (e.g. a policy needing stages a
    fixed-28 model lacks) with a ValueError; that is turned into a :class:`DynaMaskError` naming
    the value, as users of the predictor, evaluation and the CLI see it."""
    if policy is not None:
        try:
            model.policy = policy
        except ValueError as exc:
            raise DynaMaskError(f"policy {policy!r} cannot be used with this model: {exc}") from None
    if budget is not None:
        try:
            model.mask_budget = float(budget)
        except (ValueError, TypeError) as exc:
            raise DynaMaskError(f"mask budget {budget!r}: {exc}") from None


# --------------------------------------------------------------------------
# reading checkpoints
# --------------------------------------------------------------------------
def file_sha256(path: str) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks: how a head checkpoint pins its detector file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_checkpoint(path: str) -> dict:
    """The checkpoint dict at ``path`` (on the CPU, ``weights_only``), with a head checkpoint's
    detector weights merged in. Any unreadable or foreign file raises :class:`DynaMaskError`
    naming it, instead of an unpickling error of whatever type."""
    if not os.path.isfile(path):
        raise DynaMaskError(f"{path}: checkpoint file not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors come in many types
        raise DynaMaskError(f"{path}: not a readable dynamask checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise DynaMaskError(f"{path}: not a dynamask checkpoint (no 'model' entry)")
    if ckpt.get("detector"):
        ckpt = _with_detector(path, ckpt)
    return ckpt


def _with_detector(path: str, ckpt: dict) -> dict:
    """A head checkpoint holds only the mask branch and names the detector checkpoint it was
    trained on (``detector``: a path relative to the head file, ``detector_sha256``): several
    heads then ship with one detector. Returns the checkpoint with the detector's weights merged in."""
    ref = str(ckpt["detector"])
    det_path = ref if os.path.isabs(ref) else os.path.join(os.path.dirname(os.path.abspath(path)), ref)
    if not os.path.isfile(det_path):
        raise DynaMaskError(
            f"{path}: holds only a mask head; its detector {ref!r} was not found (looked for {det_path})"
        )
    expected = ckpt.get("detector_sha256")
    if expected and file_sha256(det_path) != expected:
        raise DynaMaskError(
            f"{path}: the detector file {det_path} is not the one this head was trained on "
            f"(its sha256 differs from the head's 'detector_sha256')"
        )
    detector = load_checkpoint(det_path)
    merged = {k: v for k, v in detector["model"].items() if not k.startswith(MASK_BRANCH_PREFIX)}
    merged.update(ckpt["model"])
    return {**ckpt, "model": merged, "detector_path": det_path}


# --------------------------------------------------------------------------
# what a checkpoint holds
# --------------------------------------------------------------------------
def with_defaults(cfg: dict) -> dict:
    """``cfg`` with every section completed by the defaults (for configs saved by older versions)."""
    from .config import default_config

    out = default_config()
    for section, values in cfg.items():
        if isinstance(values, dict) and isinstance(out.get(section), dict):
            out[section] = {**out[section], **values}
        else:
            out[section] = values
    return out


def hyper_parameters(cfg: dict, num_classes: int) -> dict:
    """What a checkpoint records about the model it holds (num_classes counts the background).
    Head widths are recorded resolved (lists, never a preset name or null)."""
    return _resolved(
        {
            **{k: cfg["model"].get(k) for k in ARCHITECTURE_KEYS},
            "policy": cfg["model"].get("policy"),
            "mask_geometry": cfg["model"].get("mask_geometry"),
            "mask_targets": cfg["model"].get("mask_targets"),
            "num_classes": int(num_classes),
        }
    )


def _resolved(hp: dict) -> dict:
    """Hyper-parameters with the DynaMask head widths resolved and the switch named ("cost" for
    records that predate the choice), so that records of any age compare."""
    from .models.dynamask_head import resolve_widths

    if hp.get("head") != "dynamask":
        return hp
    widths, reduced = resolve_widths(hp.get("head_widths"), hp.get("head_reduced_channels"))
    return {
        **hp,
        "head_widths": list(widths),
        "head_reduced_channels": list(reduced),
        "switch": hp.get("switch") or "cost",
        "refinement": hp.get("refinement") or LEGACY_REFINEMENT,
    }


def checkpoint_geometry(ckpt: dict) -> str:
    """The mask geometry a checkpoint's model was trained in (models/geometry.py). Read from the
    checkpoint itself, never from defaults: one without the key is ``"torchvision"``."""
    for source in (ckpt.get("hyper_parameters"), (ckpt.get("config") or {}).get("model")):
        if isinstance(source, dict) and source.get("mask_geometry"):
            return str(source["mask_geometry"])
    return LEGACY_MASK_GEOMETRY


def checkpoint_refinement(ckpt: dict) -> str:
    """``"dense"`` or ``"points"``, read from the checkpoint itself, never from defaults: one that
    records none predates point stages and is ``"dense"``."""
    for source in (ckpt.get("hyper_parameters"), (ckpt.get("config") or {}).get("model")):
        if isinstance(source, dict) and source.get("refinement"):
            return str(source["refinement"])
    return LEGACY_REFINEMENT


def _norm(v):
    return list(v) if isinstance(v, (list, tuple)) else v


def checkpoint_mismatches(
    ckpt: dict, cfg: dict, num_classes: int | None = None, detector_only: bool = False
) -> list[str]:
    """Human-readable differences between the model a checkpoint holds and the one ``cfg`` asks
    for ("backbone: checkpoint resnet18, requested resnet50"); empty when it fits. A policy
    differs harmlessly when the checkpoint's model has every stage the requested one needs."""
    from .models.policy import stages_needed

    have = ckpt.get("hyper_parameters")
    if not isinstance(have, dict):  # older checkpoints: derive from the config they carry
        ck_cfg = ckpt.get("config")
        if not isinstance(ck_cfg, dict) or "model" not in ck_cfg:
            return []
        have = hyper_parameters(with_defaults(ck_cfg), ckpt.get("num_classes") or len(ckpt.get("class_names", [])) + 1)
    have = _resolved(have)
    if have.get("head") == "dynamask":  # never the defaults' value for a checkpoint that predates the key
        have["refinement"] = checkpoint_refinement(ckpt)
    want = hyper_parameters(with_defaults(cfg), num_classes or have["num_classes"])
    keys = DETECTOR_ARCHITECTURE_KEYS if detector_only else ARCHITECTURE_KEYS
    out = []
    if (have.get("head") == want.get("head") == "maskrcnn") or detector_only:
        keys = tuple(k for k in keys if k not in ("fam", "head_widths", "head_reduced_channels", "refinement"))
    if have.get("head") == want.get("head") == "dynamask" and not detector_only:
        keys = tuple(k for k in keys if k != "maskrcnn_head_channels")
    if have.get("policy") != "dynamic":  # only a dynamic model holds a switch
        keys = tuple(k for k in keys if k != "switch")
    for k in keys:
        if _norm(have.get(k)) != _norm(want.get(k)):
            out.append(f"{k}: checkpoint {have.get(k)!r}, requested {want.get(k)!r}")
    if num_classes is not None and int(have["num_classes"]) != int(num_classes):
        names = ckpt.get("class_names")
        shown = f" ({', '.join(map(str, names[:6]))}{', ...' if len(names) > 6 else ''})" if names else ""
        out.append(f"classes: checkpoint {int(have['num_classes']) - 1}{shown}, requested {int(num_classes) - 1}")
    if not detector_only and have.get("head") == want.get("head") == "dynamask":
        hp, wp = have.get("policy"), want.get("policy")
        if hp and wp and hp != wp and (stages_needed(wp) > stages_needed(hp) or (wp == "dynamic" and hp != "dynamic")):
            out.append(
                f"policy: checkpoint {hp!r} (a model with {stages_needed(hp)} stage(s)"
                f"{' and a switch' if hp == 'dynamic' else ''}), requested {wp!r}"
            )
    return out


# --------------------------------------------------------------------------
# checkpoint → model
# --------------------------------------------------------------------------
def _torchvision_model(path: str, state: dict, cfg: dict | None):
    """(model, checkpoint-like record) for a torchvision detection file: a Mask R-CNN head in the
    ``"torchvision"`` mask geometry when the file has torchvision's mask head (else the config's
    head, mask branch untrained), ResNet-50-FPN as torchvision builds it unless ``cfg`` says
    otherwise, COCO label space for 91-class files."""
    from .models.detector import build_model
    from .models.torchvision_weights import (
        coco_label_space,
        file_num_classes,
        has_mask_head,
        load_torchvision_detection,
    )

    cfg = with_defaults(cfg or {"model": {"backbone": "resnet50", "head": "maskrcnn"}})
    n = file_num_classes(state)
    with_mask = has_mask_head(state) and cfg["model"]["head"] == "maskrcnn"
    model_cfg = {**cfg["model"], "weights_backbone": None, "policy": cfg["model"].get("policy") or "dynamic"}
    if with_mask:
        model_cfg["mask_geometry"] = "torchvision"
    build_cfg = {**cfg, "model": model_cfg}
    model = build_model(build_cfg, n)
    load_torchvision_detection(model, state, path, with_mask_head=with_mask)
    if n == 91:
        cats = coco_label_space()
        record = {"class_names": [c for _, c in cats], "cat_ids": [i for i, _ in cats]}
    else:
        record = {"class_names": [f"class_{i}" for i in range(1, n)], "cat_ids": None}
    record.update(
        num_classes=n,
        config=build_cfg,
        source="torchvision",
        mask_head_loaded=with_mask,
        hyper_parameters=hyper_parameters(build_cfg, n),
    )
    return model, record


def model_from_checkpoint(path: str, cfg: dict | None = None):
    """(model, checkpoint) from a checkpoint; ``cfg`` overrides the config it carries.

    The model is built as the checkpoint's hyper-parameters say; a ``cfg`` that asks for another
    architecture or class count is refused with the differences named. A different *policy*
    is applied after loading when the checkpoint's model supports it (e.g. a dynamic model
    evaluated as fixed-28). The mask geometry is always the checkpoint's
    (:func:`checkpoint_geometry`): its masks were trained to land where that geometry puts them.

    A torchvision detection state-dict file (e.g. ``maskrcnn_resnet50_fpn_coco-*.pth``) loads too:
    torchvision's Mask R-CNN as it is (its mask head in the ``"torchvision"`` geometry; labels =
    COCO category ids for 91-class files), built as ``cfg`` says (default: ResNet-50-FPN).
    """
    from .models.detector import build_model
    from .models.geometry import MASK_GEOMETRIES
    from .models.torchvision_weights import read_torchvision_detection_file

    state = read_torchvision_detection_file(path)
    if state is not None:
        return _torchvision_model(path, state, cfg)
    ckpt = load_checkpoint(path)
    carried = ckpt.get("config")
    if isinstance(carried, dict):  # keys added to dynamask after the checkpoint was written
        carried = with_defaults(carried)
        carried["model"]["refinement"] = checkpoint_refinement(ckpt)
    cfg = with_defaults(cfg) if cfg else carried
    if cfg is None:
        raise DynaMaskError(f"{path}: the checkpoint carries no config; pass --config")
    num_classes = ckpt.get("num_classes") or len(ckpt.get("class_names", [])) + 1
    # Like the mask geometry, the refinement is the checkpoint's: its weights are dense or point
    # stages, and a config that never names it (the default is points) still means this model.
    cfg = {**cfg, "model": {**cfg["model"], "refinement": checkpoint_refinement(ckpt)}}
    problems = checkpoint_mismatches(ckpt, cfg)
    if problems:
        raise DynaMaskError(f"{path}: checkpoint does not fit the requested model: {'; '.join(problems)}")
    requested_policy = cfg["model"].get("policy")
    build_cfg = {**cfg, "model": {**cfg["model"], "weights_backbone": None}}
    if isinstance(carried, dict) and carried.get("model", {}).get("policy"):
        build_cfg["model"]["policy"] = carried["model"]["policy"]
    geometry = checkpoint_geometry(ckpt)
    if geometry not in MASK_GEOMETRIES:
        raise DynaMaskError(
            f"{path}: the checkpoint's mask_geometry {geometry!r} is not one of {', '.join(MASK_GEOMETRIES)}"
        )
    build_cfg["model"]["mask_geometry"] = geometry
    build_cfg["model"]["refinement"] = checkpoint_refinement(ckpt)
    model = build_model(build_cfg, num_classes)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        first = str(exc).splitlines()[0:3]
        raise DynaMaskError(
            f"{path}: checkpoint does not fit the requested model "
            f"(head={cfg['model']['head']}, policy={cfg['model']['policy']}, "
            f"backbone={cfg['model']['backbone']}, classes={num_classes - 1}): {' '.join(first)}"
        ) from None
    if requested_policy and cfg["model"].get("head") != "maskrcnn" and requested_policy != model.policy:
        model.policy = requested_policy
    warn_stale_price(path, ckpt, model)
    return model, ckpt


def warn_stale_price(path: str, ckpt: dict, model) -> None:
    """One warning when a point-refinement switch runs with another ``refinement_points`` than its
    price was set with (by training or ``dynamask calibrate``): the stage costs it trades against
    are others, so the budget it was set to meet no longer holds — recalibrate."""
    head = model.mask_branch
    if getattr(head, "refinement", "dense") != "points" or getattr(head, "switch", None) is None:
        return
    calibration = ckpt.get("calibration") if isinstance(ckpt.get("calibration"), dict) else {}
    trained = ((ckpt.get("config") or {}).get("model") or {}).get("refinement_points")
    was = calibration.get("refinement_points") or trained
    if was and int(was) != head.refinement_points:
        how = "calibrated" if calibration.get("refinement_points") else "trained"
        warnings.warn(
            f"{path}: the switch was {how} with model.refinement_points={int(was)}; with "
            f"{head.refinement_points} its stage costs differ and its budget no longer holds: "
            f"run `dynamask calibrate` with the new value",
            UserWarning,
            stacklevel=3,
        )
