"""Configuration for dynamask: defaults, YAML loading, overrides, validation.

A configuration is a plain nested ``dict`` (see :data:`DEFAULTS`).  It is
built by :func:`load_config` in three layers, each overriding the previous:

1. the defaults below;
2. a YAML file (which may name ``_base_: other.yaml`` -- or a list of files --
   relative to itself; bases are merged first, in order, then the file);
3. ``key=value`` overrides from the command line, e.g. ``solver.max_iter=200``
   or ``solver.steps=[100,200]`` or ``model.weights_backbone=null``; values are
   parsed as YAML.

Every key is checked: an unknown key, a value of the wrong type or an
out-of-range value raises :class:`~dynamask.errors.ConfigError` naming the key,
where it was set (file path or "command line") and, for unknown keys, the
closest valid key.

Paths
-----
Relative paths in ``data.*`` and in ``model.weights_backbone`` written in a
YAML file are resolved against *the directory of that YAML file* (so a config
works whatever the current directory is); the same keys given relative on the
command line are resolved against the current directory.  Either way they are
stored as absolute paths, so a config written by :func:`save_config` loads
back unchanged.  ``output_dir`` is kept exactly as given (relative paths are
relative to the directory ``dynamask`` runs in).

YAML notes
----------
Floats may be written in exponent form without a dot (``1e-4``; plain
PyYAML would read that as a string), and duplicate keys in one mapping are an
error instead of silently keeping the last one.
"""

from __future__ import annotations

import copy
import difflib
import math
import os
import re
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple, Union

import yaml

from .errors import ConfigError

__all__ = [
    "DEFAULTS",
    "POLICIES",
    "HEADS",
    "FAMS",
    "MASK_GEOMETRIES",
    "SWITCHES",
    "WIDTH_PRESETS",
    "BACKBONES",
    "OPTIMIZERS",
    "AMP_MODES",
    "PATH_KEYS",
    "default_config",
    "load_config",
    "validate",
    "save_config",
    "config_to_yaml",
    "get",
    "set_",
    "flatten",
    "valid_keys",
    "effective_lr",
]

# --------------------------------------------------------------------------
# Allowed values
# --------------------------------------------------------------------------

#: mask-resolution policies of the DynaMask head
POLICIES: Tuple[str, ...] = ("dynamic", "fixed-14", "fixed-28", "fixed-56", "fixed-112", "size")
#: mask heads: DynaMask, or the plain Mask R-CNN 28x28 head (baseline)
HEADS: Tuple[str, ...] = ("dynamask", "maskrcnn")
#: feature aggregation module of the DynaMask head
FAMS: Tuple[str, ...] = ("deform", "conv")
DEFORM_KERNELS: Tuple[str, ...] = ("auto", "gather", "torchvision")
#: where a box's mask cells lie (models/geometry.py): continuous boxes, or Mask R-CNN's legacy geometry
MASK_GEOMETRIES: Tuple[str, ...] = ("exact", "torchvision")
#: Mask Switch Module: this project's cost-regressing switch, or the authors' (models/mask_switch.py)
SWITCHES: Tuple[str, ...] = ("cost", "paper")
#: named DynaMask head widths (models/dynamask_head.py, WIDTH_PRESETS)
WIDTH_PRESETS: Tuple[str, ...] = ("balanced", "paper")
#: backbones accepted by torchvision's resnet_fpn_backbone
BACKBONES: Tuple[str, ...] = (
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "resnext50_32x4d",
    "resnext101_32x8d",
    "resnext101_64x4d",
    "wide_resnet50_2",
    "wide_resnet101_2",
)
OPTIMIZERS: Tuple[str, ...] = ("sgd", "adamw")
AMP_MODES: Tuple[str, ...] = ("none", "bf16", "fp16")

#: keys holding filesystem paths that are resolved relative to the YAML file
PATH_KEYS: Tuple[str, ...] = (
    "data.train_json",
    "data.train_images",
    "data.val_json",
    "data.val_images",
    "model.weights_backbone",
    "model.init_weights",
    "model.detector_weights",
)

# --------------------------------------------------------------------------
# Defaults (every valid key is listed here)
# --------------------------------------------------------------------------

DEFAULTS: Dict[str, Any] = {
    "data": {
        # COCO-format annotation file (instances JSON) of the training set.
        # Relative paths in a YAML file are relative to that file's folder.
        "train_json": None,
        # folder holding the training images (file_name in the JSON is relative to it)
        "train_images": None,
        # COCO-format annotation file of the validation set (null = no evaluation)
        "val_json": None,
        # folder holding the validation images
        "val_images": None,
        # keep training images that have no usable instance (as negatives)
        "keep_empty": False,
        # DataLoader worker processes (0 = load in the main process)
        "num_workers": 2,
    },
    "model": {
        # mask head: "dynamask" (dynamic resolution) or "maskrcnn" (plain 28x28 baseline)
        "head": "dynamask",
        # DynaMask resolution policy: dynamic | fixed-14 | fixed-28 | fixed-56 | fixed-112 | size
        "policy": "dynamic",
        # ResNet-FPN backbone (torchvision name, e.g. resnet18, resnet50)
        "backbone": "resnet50",
        # number of object categories, background excluded (null = from the training set)
        "num_classes": None,
        # feature aggregation module of the DynaMask head: "deform" or "conv"
        "fam": "deform",
        # who computes the deformable FAM conv: "auto" (torchvision's op on CUDA, the
        # gather-and-GEMM form elsewhere: fast on CPU, exportable), "gather" or "torchvision";
        # same weights and results either way
        "deform_kernel": "auto",
        # mask geometry of RoI features, targets and paste: "exact" (a box is a continuous
        # rectangle its mask cells tile; RoIAlign aligned=True) or "torchvision" (Mask R-CNN's
        # legacy geometry; checkpoints that do not record a geometry were trained with it)
        "mask_geometry": "exact",
        # FPN width (torchvision: 256); the CPU configs use less
        "fpn_channels": 256,
        # box head hidden width (torchvision: 1024)
        "box_representation_size": 1024,
        # DynaMask region-feature widths at 14/28/56/112: "balanced" (96, 64, 48, 32; image
        # features reduced to 32, 32, 16), "paper" (the authors': 256, 128, 64, 32; image features
        # reduced to 256, 128, 64) or a list of four (null = "balanced")
        "head_widths": None,
        # DynaMask reduced image-feature widths pooled at 14/28/56 (null = those of head_widths)
        "head_reduced_channels": None,
        # Mask Switch Module: "cost" (regresses each stage's selection cost, λ prices compute;
        # the default) or "paper" (the authors' 56x56-P2 switch, Gumbel-softmax, hinge + balance)
        "switch": "cost",
        # conv width of the Mask R-CNN baseline head (torchvision: 256)
        "maskrcnn_head_channels": 256,
        # local ImageNet checkpoint (.pth) for the backbone (null = random init; no download)
        "weights_backbone": None,
        # a dynamask checkpoint whose model weights initialise training (fine-tuning; null = none)
        "init_weights": None,
        # a dynamask checkpoint whose detector (backbone, FPN, RPN, box head; any mask head)
        # initialises training; the mask branch starts from scratch (null = none)
        "detector_weights": None,
        # train only the mask branch; the detector keeps its weights and batch-norm statistics
        "freeze_detector": False,
        # backbone stages trained (0..5, counted from the top); use 5 from random init
        "trainable_backbone_layers": 3,
        # training target of the mean mask cost, as a fraction of always using the largest mask, in (0, 1]
        "mask_budget_target": 0.5,
        # test-time budget dial in (0, 1]: 1.0 = as trained, lower = cheaper masks
        "mask_budget": 1.0,
        # weight of the paper's budget hinge on Gumbel-softmax samples (null = per switch: 0 for
        # "cost", whose budget is met by the price of compute λ — the hinge's gradient corrupted
        # its cost regression, README "How it works" —, the authors' 0.3 for "paper")
        "budget_weight": None,
        # weight of the term that keeps the resolution choices balanced across instances
        # (null = per switch: 0, off, for "cost"; the authors' 0.8 for "paper")
        "balance_weight": None,
        # weight of the switch's regression of each stage's selection cost
        "switch_cost_weight": 1.0,
        # mask-loss weight of each refinement stage (14, 28, 56, 112 px)
        "stage_loss_weights": [0.25, 0.5, 0.75, 1.0],
        # weight of the boundary (edge) mask loss
        "edge_loss_weight": 1.0,
        # weight of the paper's Gumbel-softmax selection loss (0 by default, see budget_weight)
        "select_loss_weight": 0.0,
        # temperature of the Gumbel-softmax resolution selector
        "gumbel_tau": 0.5,
        # RPN proposals kept before / after NMS, per image, in training
        "rpn_pre_nms_top_n_train": 2000,
        "rpn_post_nms_top_n_train": 2000,
        # RPN proposals kept before / after NMS, per image, at test time
        "rpn_pre_nms_top_n_test": 1000,
        "rpn_post_nms_top_n_test": 1000,
        # RoIs sampled per image for the box (and mask) heads in training
        "box_batch_size_per_image": 512,
        # at most this many positive RoIs per image train the mask head (null = all positives;
        # a CPU knob: the multi-stage head's training cost grows with the positives it sees)
        "mask_rois_per_image": None,
        # maximum detections per image returned by the detector
        "box_detections_per_img": 100,
        # detector's minimum class score for a detection to be returned
        "box_score_thresh": 0.05,
    },
    "input": {
        # shorter image side after resizing; a list = random choice per image in training
        # (multi-scale), its last entry is used at test time
        "min_size": 800,
        # upper bound on the longer image side after resizing
        "max_size": 1333,
        # probability of a horizontal flip in training
        "flip_prob": 0.5,
        # strength of colour jitter (brightness/contrast/saturation) in training, 0 = off
        "color_jitter": 0.0,
    },
    "solver": {
        # "sgd" (with momentum) or "adamw"
        "optimizer": "sgd",
        # learning rate for reference_batch images per step; the actual LR is
        # base_lr * ims_per_batch / reference_batch (linear scaling rule)
        "base_lr": 0.02,
        # batch size base_lr was tuned for
        "reference_batch": 16,
        # images per training step
        "ims_per_batch": 16,
        # number of training steps
        "max_iter": 90000,
        # SGD momentum (AdamW: beta1)
        "momentum": 0.9,
        # weight decay
        "weight_decay": 1e-4,
        # linear warm-up length in steps
        "warmup_iters": 500,
        # LR multiplier at the first warm-up step
        "warmup_factor": 0.001,
        # steps at which the LR is multiplied by gamma
        "steps": [60000, 80000],
        # LR decay factor at each of solver.steps
        "gamma": 0.1,
        # clip the gradient norm to this value (null = no clipping)
        "clip_grad_norm": None,
        # learning rate of the Mask Switch Module relative to base_lr (it must become decisive
        # within the run; see losses.switch_cost_loss)
        "switch_lr_multiplier": 10.0,
        # mixed precision: "none", "bf16" or "fp16" (fp16 uses a gradient scaler)
        "amp": "none",
        # save a checkpoint every N steps (0 = only at the end)
        "checkpoint_period": 5000,
        # log losses every N steps
        "log_period": 20,
        # abort after this many consecutive steps with a non-finite loss (those steps are skipped)
        "max_nonfinite_steps": 10,
    },
    "test": {
        # evaluate on the validation set every N steps (0 = only at the end)
        "eval_period": 0,
        # detections kept per image at test time (COCO AP uses 100)
        "max_dets": 100,
        # minimum score of a detection kept at test time
        "score_thresh": 0.05,
    },
    # random seed (Python, NumPy, torch)
    "seed": 0,
    # where checkpoints, logs and the resolved config go (kept as given: relative = to the CWD)
    "output_dir": "output",
}

# --------------------------------------------------------------------------
# Schema (derived from DEFAULTS plus the entries below)
# --------------------------------------------------------------------------

# kinds: "int", "float", "str", "bool", "list_int", "list_float", "int_or_list_int", "str_or_list_int"
_KIND_OVERRIDES: Dict[str, Tuple[str, bool]] = {
    # key: (kind, nullable)
    "data.train_json": ("str", True),
    "data.train_images": ("str", True),
    "data.val_json": ("str", True),
    "data.val_images": ("str", True),
    "model.num_classes": ("int", True),
    "model.mask_rois_per_image": ("int", True),
    "model.head_widths": ("str_or_list_int", True),
    "model.budget_weight": ("float", True),
    "model.balance_weight": ("float", True),
    "model.head_reduced_channels": ("list_int", True),
    "model.weights_backbone": ("str", True),
    "model.init_weights": ("str", True),
    "model.detector_weights": ("str", True),
    "solver.clip_grad_norm": ("float", True),
    "input.min_size": ("int_or_list_int", False),
}

_CHOICES: Dict[str, Tuple[str, ...]] = {
    "model.head": HEADS,
    "model.policy": POLICIES,
    "model.fam": FAMS,
    "model.deform_kernel": DEFORM_KERNELS,
    "model.mask_geometry": MASK_GEOMETRIES,
    "model.switch": SWITCHES,
    "model.backbone": BACKBONES,
    "solver.optimizer": OPTIMIZERS,
    "solver.amp": AMP_MODES,
}


def _gt0(v):
    return v > 0


def _ge0(v):
    return v >= 0


def _unit_open_closed(v):
    return 0 < v <= 1


def _unit_closed(v):
    return 0 <= v <= 1


def _increasing_positive(v):
    return all(x > 0 for x in v) and all(a < b for a, b in zip(v, v[1:]))


# single-key value checks: key -> (predicate, description); None values are not checked
_RULES: Dict[str, Tuple[Callable[[Any], bool], str]] = {
    "data.num_workers": (_ge0, "must be >= 0"),
    "model.num_classes": (_gt0, "must be >= 1"),
    "model.trainable_backbone_layers": (lambda v: 0 <= v <= 5, "must be between 0 and 5"),
    "model.mask_budget_target": (_unit_open_closed, "must be in (0, 1]"),
    "model.mask_budget": (_unit_open_closed, "must be in (0, 1]"),
    "model.budget_weight": (_ge0, "must be >= 0"),
    "model.balance_weight": (_ge0, "must be >= 0"),
    "model.switch_cost_weight": (_ge0, "must be >= 0"),
    "solver.switch_lr_multiplier": (_gt0, "must be > 0"),
    "model.stage_loss_weights": (
        lambda v: len(v) == 4 and all(x >= 0 for x in v),
        "must be a list of 4 non-negative weights (stages 14, 28, 56, 112)",
    ),
    "model.edge_loss_weight": (_ge0, "must be >= 0"),
    "model.select_loss_weight": (_ge0, "must be >= 0"),
    "model.gumbel_tau": (_gt0, "must be > 0"),
    "model.rpn_pre_nms_top_n_train": (_gt0, "must be >= 1"),
    "model.rpn_post_nms_top_n_train": (_gt0, "must be >= 1"),
    "model.rpn_pre_nms_top_n_test": (_gt0, "must be >= 1"),
    "model.rpn_post_nms_top_n_test": (_gt0, "must be >= 1"),
    "model.box_batch_size_per_image": (_gt0, "must be >= 1"),
    "model.mask_rois_per_image": (_gt0, "must be >= 1"),
    "model.fpn_channels": (_gt0, "must be >= 1"),
    "model.box_representation_size": (_gt0, "must be >= 1"),
    "model.maskrcnn_head_channels": (_gt0, "must be >= 1"),
    "model.head_widths": (
        lambda v: v in WIDTH_PRESETS if isinstance(v, str) else len(v) == 4 and all(x > 0 for x in v),
        f"must be {' or '.join(repr(p) for p in WIDTH_PRESETS)} or 4 positive widths (14, 28, 56, 112)",
    ),
    "model.head_reduced_channels": (lambda v: len(v) == 3 and all(x > 0 for x in v), "must be 3 positive widths (14, 28, 56)"),
    "model.box_detections_per_img": (_gt0, "must be >= 1"),
    "model.box_score_thresh": (_unit_closed, "must be in [0, 1]"),
    "input.min_size": (
        lambda v: (v > 0) if isinstance(v, int) else (len(v) > 0 and all(x > 0 for x in v)),
        "must be a positive integer or a non-empty list of positive integers",
    ),
    "input.max_size": (_gt0, "must be >= 1"),
    "input.flip_prob": (_unit_closed, "must be in [0, 1]"),
    "input.color_jitter": (_ge0, "must be >= 0"),
    "solver.base_lr": (_gt0, "must be > 0"),
    "solver.reference_batch": (_gt0, "must be >= 1"),
    "solver.ims_per_batch": (_gt0, "must be >= 1"),
    "solver.max_iter": (_gt0, "must be >= 1"),
    "solver.momentum": (lambda v: 0 <= v < 1, "must be in [0, 1)"),
    "solver.weight_decay": (_ge0, "must be >= 0"),
    "solver.warmup_iters": (_ge0, "must be >= 0"),
    "solver.warmup_factor": (_unit_open_closed, "must be in (0, 1]"),
    "solver.steps": (_increasing_positive, "must be a strictly increasing list of positive step numbers"),
    "solver.gamma": (_gt0, "must be > 0"),
    "solver.clip_grad_norm": (_gt0, "must be > 0 (or null to disable clipping)"),
    "solver.checkpoint_period": (_ge0, "must be >= 0"),
    "solver.log_period": (_gt0, "must be >= 1"),
    "solver.max_nonfinite_steps": (_ge0, "must be >= 0"),
    "test.eval_period": (_ge0, "must be >= 0"),
    "test.max_dets": (_gt0, "must be >= 1"),
    "test.score_thresh": (_unit_closed, "must be in [0, 1]"),
    "output_dir": (lambda v: v.strip() != "", "must not be empty"),
}
for _key in PATH_KEYS:
    _RULES[_key] = (lambda v: v.strip() != "", "must be a path or null, not an empty string")


_KIND_NAMES = {
    "int": "an integer",
    "float": "a number",
    "str": "a string",
    "bool": "true or false",
    "list_int": "a list of integers",
    "list_float": "a list of numbers",
    "int_or_list_int": "an integer or a list of integers",
    "str_or_list_int": "a name or a list of integers",
}


def _infer_kind(key: str, value: Any) -> Tuple[str, bool]:
    if key in _KIND_OVERRIDES:
        return _KIND_OVERRIDES[key]
    if isinstance(value, bool):
        return "bool", False
    if isinstance(value, int):
        return "int", False
    if isinstance(value, float):
        return "float", False
    if isinstance(value, str):
        return "str", False
    if isinstance(value, list):
        if all(isinstance(x, int) and not isinstance(x, bool) for x in value):
            return "list_int", False
        return "list_float", False
    raise AssertionError(f"config key {key!r}: cannot infer the type of default {value!r}")


def _walk(d: Mapping[str, Any], prefix: str = ""):
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            yield key, v, True
            yield from _walk(v, key + ".")
        else:
            yield key, v, False


_SCHEMA: Dict[str, Tuple[str, bool]] = {}
_SECTIONS: List[str] = []
for _key, _value, _is_section in _walk(DEFAULTS):
    if _is_section:
        _SECTIONS.append(_key)
    else:
        _SCHEMA[_key] = _infer_kind(_key, _value)
del _key, _value, _is_section
assert set(_KIND_OVERRIDES) <= set(_SCHEMA)
assert set(_CHOICES) <= set(_SCHEMA)
assert set(_RULES) <= set(_SCHEMA)
assert set(PATH_KEYS) <= set(_SCHEMA)


def valid_keys() -> List[str]:
    """All valid dotted leaf keys, in definition order."""
    return list(_SCHEMA)


def default_config() -> Dict[str, Any]:
    """A fresh (deep) copy of :data:`DEFAULTS`."""
    return copy.deepcopy(DEFAULTS)


# --------------------------------------------------------------------------
# Dotted helpers
# --------------------------------------------------------------------------

_MISSING = object()


def get(cfg: Mapping[str, Any], key: str, default: Any = _MISSING) -> Any:
    """``get(cfg, "solver.base_lr")``. Raises ``KeyError`` if absent and no default."""
    node: Any = cfg
    for part in key.split("."):
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif default is _MISSING:
            raise KeyError(key)
        else:
            return default
    return node


def set_(cfg: Dict[str, Any], key: str, value: Any) -> None:
    """``set_(cfg, "solver.base_lr", 0.01)``; creates missing intermediate dicts."""
    parts = key.split(".")
    node = cfg
    for part in parts[:-1]:
        nxt = node.get(part)
        if not isinstance(nxt, dict):
            nxt = {}
            node[part] = nxt
        node = nxt
    node[parts[-1]] = value


def flatten(cfg: Mapping[str, Any]) -> Dict[str, Any]:
    """``{"solver.base_lr": 0.02, ...}`` for every leaf of ``cfg``."""
    return {k: v for k, v, is_section in _walk(cfg) if not is_section}


def effective_lr(cfg: Mapping[str, Any]) -> float:
    """Learning rate after linear scaling: base_lr * ims_per_batch / reference_batch."""
    s = cfg["solver"]
    return float(s["base_lr"]) * s["ims_per_batch"] / s["reference_batch"]


# --------------------------------------------------------------------------
# YAML
# --------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads ``1e-4`` as a float and rejects duplicate keys."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            self.flatten_mapping(node)
            seen: Dict[Any, int] = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                try:
                    first = seen.get(key)
                except TypeError:  # unhashable; the base class reports it
                    continue
                if first is not None:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping",
                        node.start_mark,
                        f"duplicate key {key!r} (first given on line {first + 1})",
                        key_node.start_mark,
                    )
                seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


# own copy of the resolver table so the global SafeLoader is untouched
_Loader.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _yaml_error(source: str, exc: yaml.YAMLError) -> ConfigError:
    def at(mark) -> str:
        return f"line {mark.line + 1}, column {mark.column + 1}"

    problem_mark = getattr(exc, "problem_mark", None)
    context_mark = getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    mark = problem_mark or context_mark
    msg = f"{source}: invalid YAML at {at(mark) if mark is not None else 'unknown position'}: {problem}"
    if context and "duplicate key" not in str(problem):
        msg += f" ({context}"
        if context_mark is not None and problem_mark is not None and context_mark.line != problem_mark.line:
            msg += f" started at {at(context_mark)}"
        msg += ")"
    return ConfigError(msg)


def _read_yaml(path: str) -> Any:
    try:
        with open(path, "r", encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"config path is a directory, not a YAML file: {path}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not a UTF-8 text file ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror or e}") from None
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as e:
        raise _yaml_error(path, e) from None


# --------------------------------------------------------------------------
# Checking and merging
# --------------------------------------------------------------------------


def _suggest(key: str, candidates: Iterable[str]) -> Optional[str]:
    candidates = list(candidates)
    match = difflib.get_close_matches(key, candidates, n=1, cutoff=0.6)
    if match:
        return match[0]
    leaf = key.rsplit(".", 1)[-1]
    same_leaf = [c for c in candidates if c.rsplit(".", 1)[-1] == leaf]
    if same_leaf:
        return same_leaf[0]
    by_leaf: Dict[str, str] = {}
    for c in candidates:
        by_leaf.setdefault(c.rsplit(".", 1)[-1], c)
    match = difflib.get_close_matches(leaf, list(by_leaf), n=1, cutoff=0.75)
    return by_leaf[match[0]] if match else None


def _unknown_key_error(key: str, source: str, section: str = "") -> ConfigError:
    msg = f"{source}: unknown config key '{key}'"
    hint = _suggest(key, _SCHEMA) or _suggest(key, _SECTIONS)
    if hint:
        msg += f" (did you mean '{hint}'?)"
    elif section:
        keys = [k.rsplit(".", 1)[-1] for k in _SCHEMA if k.startswith(section + ".")]
        msg += f"; valid keys in '{section}': {', '.join(keys)}"
    else:
        msg += f"; valid top-level keys: {', '.join(k for k in DEFAULTS)}"
    return ConfigError(msg)


def _fmt(v: Any) -> str:
    return repr(v) if isinstance(v, str) else yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("...").strip()


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _as_int(v: Any) -> Any:
    """int, or an integral float (e.g. 1e4) as int; _MISSING otherwise."""
    if _is_int(v):
        return v
    if isinstance(v, float) and math.isfinite(v) and v.is_integer():
        return int(v)
    return _MISSING


def _as_float(v: Any) -> Any:
    if isinstance(v, float):
        return v
    if _is_int(v):
        return float(v)
    return _MISSING


def _coerce(key: str, value: Any, source: str) -> Any:
    """Type-check (and normalise) one leaf value; raise ConfigError naming key and source."""
    kind, nullable = _SCHEMA[key]
    if value is None:
        if nullable:
            return None
        raise ConfigError(f"{source}: '{key}' must be {_KIND_NAMES[kind]}, not null")
    out: Any = _MISSING
    if kind == "int":
        out = _as_int(value)
    elif kind == "float":
        out = _as_float(value)
    elif kind == "str":
        out = value if isinstance(value, str) else _MISSING
    elif kind == "bool":
        out = value if isinstance(value, bool) else _MISSING
    elif kind == "str_or_list_int" and isinstance(value, str):
        out = value
    elif kind in ("list_int", "list_float", "int_or_list_int", "str_or_list_int"):
        if kind == "int_or_list_int" and not isinstance(value, (list, tuple)):
            out = _as_int(value)
        elif isinstance(value, (list, tuple)):
            conv = _as_int if kind != "list_float" else _as_float
            items = [conv(x) for x in value]
            out = _MISSING if any(x is _MISSING for x in items) else items
    if out is _MISSING:
        raise ConfigError(
            f"{source}: '{key}' must be {_KIND_NAMES[kind]}"
            f"{' or null' if nullable else ''}, got {_fmt(value)} ({type(value).__name__})"
        )
    if isinstance(out, float) and not math.isfinite(out):
        raise ConfigError(f"{source}: '{key}' must be a finite number, got {out}")
    choices = _CHOICES.get(key)
    if choices is not None and out not in choices:
        msg = f"{source}: '{key}' must be one of {', '.join(choices)}; got {_fmt(out)}"
        close = difflib.get_close_matches(str(out), choices, n=1, cutoff=0.5)
        if close:
            msg += f" (did you mean '{close[0]}'?)"
        raise ConfigError(msg)
    rule = _RULES.get(key)
    if rule is not None and not rule[0](out):
        raise ConfigError(f"{source}: '{key}' {rule[1]}; got {_fmt(out)}")
    return out


def _resolve_path(value: Any, base_dir: str) -> Any:
    if not isinstance(value, str) or value == "":
        return value
    p = os.path.expanduser(value)
    if not os.path.isabs(p):
        p = os.path.join(base_dir, p)
    return os.path.normpath(os.path.abspath(p))


def _merge(
    cfg: Dict[str, Any],
    data: Mapping[Any, Any],
    source: str,
    base_dir: str,
    sources: Dict[str, str],
    prefix: str = "",
) -> None:
    """Check ``data`` against the schema and merge it into ``cfg`` in place."""
    section = prefix[:-1]
    for raw_key, value in data.items():
        name = str(raw_key)
        key = prefix + name
        if key in _SCHEMA:
            value = _coerce(key, value, source)
            if key in PATH_KEYS:
                value = _resolve_path(value, base_dir)
            cfg[name] = value
            sources[key] = source
        elif key in _SECTIONS:
            if value is None:  # "model:" with nothing under it
                continue
            if not isinstance(value, Mapping):
                raise ConfigError(
                    f"{source}: '{key}' is a section and must be a mapping of keys "
                    f"(e.g. {key}.{next(k for k in _SCHEMA if k.startswith(key + '.')).split('.')[-1]}: ...), "
                    f"got {_fmt(value)}"
                )
            _merge(cfg[name], value, source, base_dir, sources, key + ".")
        else:
            shown = key
            if isinstance(value, Mapping) and value:  # misspelled section: name a full key
                first = next(iter(value))
                shown = f"{key}.{first}"
            raise _unknown_key_error(shown, source, section)


def _apply_file(cfg: Dict[str, Any], path: str, sources: Dict[str, str], stack: Tuple[str, ...]) -> None:
    real = os.path.realpath(path)
    if real in stack:
        chain = " -> ".join(list(stack[stack.index(real):]) + [real])
        raise ConfigError(f"{path}: circular _base_ inheritance: {chain}")
    data = _read_yaml(path)
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: a config file must be a YAML mapping of keys, got {type(data).__name__}")
    data = dict(data)
    base_dir = os.path.dirname(os.path.abspath(path))
    bases = data.pop("_base_", None)
    if bases is not None:
        if isinstance(bases, str):
            bases = [bases]
        if not isinstance(bases, list) or not all(isinstance(b, str) and b for b in bases):
            raise ConfigError(f"{path}: '_base_' must be a file path or a list of file paths")
        for b in bases:
            bpath = os.path.join(base_dir, os.path.expanduser(b))
            if not os.path.exists(bpath):
                raise ConfigError(f"{path}: _base_ config file not found: {b} (looked for {os.path.normpath(bpath)})")
            _apply_file(cfg, bpath, sources, stack + (real,))
    _merge(cfg, data, path, base_dir, sources)


def _parse_override(item: str) -> Tuple[str, Any]:
    if not isinstance(item, str) or "=" not in item:
        raise ConfigError(f"command line: override {item!r} must have the form key=value (e.g. solver.max_iter=200)")
    key, text = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"command line: override {item!r} has an empty key")
    if key not in _SCHEMA and key not in _SECTIONS:
        raise _unknown_key_error(key, "command line", key.rsplit(".", 1)[0] if "." in key else "")
    try:
        value = yaml.load(text, Loader=_Loader) if text.strip() else None
    except yaml.YAMLError:
        value = text  # not YAML: take it literally (checked below)
    if key in _SCHEMA and _SCHEMA[key][0] == "str" and value is not None and not isinstance(value, str):
        value = text.strip()  # e.g. output_dir=2024 stays the string "2024"
    return key, value


def load_config(
    path: Optional[Union[str, os.PathLike]] = None,
    overrides: Union[Iterable[str], Mapping[str, Any]] = (),
) -> Dict[str, Any]:
    """Build a validated config: defaults <- YAML file (with ``_base_``) <- overrides.

    ``overrides`` is an iterable of ``"dotted.key=value"`` strings (values are
    parsed as YAML) or a mapping ``{"dotted.key": value}`` (values used as-is).
    Raises :class:`ConfigError` for any problem.
    """
    cfg = default_config()
    sources: Dict[str, str] = {}
    if path is not None:
        _apply_file(cfg, os.fspath(path), sources, ())
    if isinstance(overrides, Mapping):
        items = list(overrides.items())
        for key, _ in items:
            if key not in _SCHEMA and key not in _SECTIONS:
                raise _unknown_key_error(str(key), "command line")
    elif isinstance(overrides, str):
        items = [_parse_override(overrides)]
    else:
        items = [_parse_override(o) for o in overrides]
    cwd = os.getcwd()
    for key, value in items:
        nested: Any = value
        for part in reversed(key.split(".")):
            nested = {part: nested}
        _merge(cfg, nested, "command line", cwd, sources)
    _check_cross(cfg, sources)
    return cfg


def _check_cross(cfg: Mapping[str, Any], sources: Mapping[str, str]) -> None:
    min_size = cfg["input"]["min_size"]
    largest = max(min_size) if isinstance(min_size, list) else min_size
    if cfg["input"]["max_size"] < largest:
        src = sources.get("input.max_size") or sources.get("input.min_size") or "config"
        raise ConfigError(
            f"{src}: 'input.max_size' ({cfg['input']['max_size']}) must be >= 'input.min_size' ({_fmt(min_size)})"
        )


def validate(cfg: Mapping[str, Any], source: str = "config") -> Dict[str, Any]:
    """Check a config dict built in code; returns a normalised deep copy.

    Every key must be known and every leaf present, with a valid value.
    """
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"{source}: a config must be a mapping, got {type(cfg).__name__}")
    flat = flatten(cfg)
    for key in flat:
        if key not in _SCHEMA:
            raise _unknown_key_error(key, source, key.rsplit(".", 1)[0] if "." in key else "")
    missing = [k for k in _SCHEMA if k not in flat]
    if missing:
        raise ConfigError(f"{source}: missing config key(s): {', '.join(missing)}")
    out = default_config()
    for key, value in flat.items():
        set_(out, key, _coerce(key, value, source))
    _check_cross(out, {})
    return out


# --------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------


def _plain(v: Any) -> Any:
    if isinstance(v, Mapping):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, os.PathLike):
        return os.fspath(v)
    return v


class _Dumper(yaml.SafeDumper):
    """Block-style mappings, flow-style (inline) lists."""


def _represent_list(dumper, data):
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=True)


_Dumper.add_representer(list, _represent_list)


def _dump(data: Mapping[str, Any]) -> str:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=False, allow_unicode=True)


def config_to_yaml(cfg: Mapping[str, Any]) -> str:
    """The config as YAML text (sections separated by blank lines, lists inline)."""
    plain = _plain(cfg)
    chunks = ["# dynamask resolved config\n"]
    scalars: Dict[str, Any] = {}
    for k, v in plain.items():
        if isinstance(v, dict):
            chunks.append(_dump({k: v}))
        else:
            scalars[k] = v
    if scalars:
        chunks.append(_dump(scalars))
    return "\n".join(chunks)


def save_config(cfg: Mapping[str, Any], path: Union[str, os.PathLike]) -> None:
    """Write ``config_to_yaml(cfg)`` to ``path`` atomically (temp file + os.replace)."""
    from .atomic import write_bytes_atomic

    write_bytes_atomic(path, config_to_yaml(cfg).encode("utf-8"))
