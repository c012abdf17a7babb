"""The configuration schema: one typed, documented pydantic model per section.

Each field's type, default, constraint and one-line ``description`` live here,
and nowhere else: :data:`DEFAULTS`, the list of valid keys, the error messages
and ``dynamask config`` are all derived from these classes.  Validation is
strict (no ``"5"`` for 5, no ``true`` for 1) except that an integral float
(``1e4``) is taken as an int and an int as a float, as YAML writers expect.
"""

import math
import typing
from typing import Annotated, Any, Literal, Optional, Union

import yaml
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationInfo, model_validator
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError

# --------------------------------------------------------------------------
# Allowed values
# --------------------------------------------------------------------------

#: mask-resolution policies of the DynaMask head
POLICIES: tuple[str, ...] = ("dynamic", "fixed-14", "fixed-28", "fixed-56", "fixed-112", "size")
#: mask heads: DynaMask, or the plain Mask R-CNN 28x28 head (baseline)
HEADS: tuple[str, ...] = ("dynamask", "maskrcnn")
#: feature aggregation module of the DynaMask head
FAMS: tuple[str, ...] = ("deform", "conv")
DEFORM_KERNELS: tuple[str, ...] = ("auto", "gather", "torchvision")
#: where a box's mask cells lie (models/geometry.py): continuous boxes, or Mask R-CNN's legacy geometry
MASK_GEOMETRIES: tuple[str, ...] = ("exact", "torchvision")
#: where training's mask targets come from (models/detector.py DynaMaskRCNN.mask_targets)
MASK_TARGETS: tuple[str, ...] = ("original", "resized")
#: Mask Switch Module: this project's cost-regressing switch, or the authors' (models/mask_switch.py)
SWITCHES: tuple[str, ...] = ("cost", "paper")
#: what trains the authors' switch (models/dynamask_head.py, DynaMaskHead.PAPER_SIGNALS)
PAPER_SIGNALS: tuple[str, ...] = ("edge", "selection_cost")
#: how the DynaMask head's 56 and 112 stages are computed (models/point_refine.py)
REFINEMENTS: tuple[str, ...] = ("dense", "points")
#: point_refine.INFERENCE_POINTS / TRAINING_POINTS (the config does not import the model; a test holds them equal)
INFERENCE_POINTS, TRAINING_POINTS = 1568, 784
#: named DynaMask head widths (models/dynamask_head.py, WIDTH_PRESETS)
WIDTH_PRESETS: tuple[str, ...] = ("balanced", "paper")
#: backbones accepted by torchvision's resnet_fpn_backbone
BACKBONES: tuple[str, ...] = (
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
OPTIMIZERS: tuple[str, ...] = ("sgd", "adamw")
AMP_MODES: tuple[str, ...] = ("none", "bf16", "fp16")

#: keys holding filesystem paths that are resolved relative to the YAML file
PATH_KEYS: tuple[str, ...] = (
    "data.train_json",
    "data.train_images",
    "data.val_json",
    "data.val_images",
    "model.weights_backbone",
    "model.init_weights",
    "model.detector_weights",
)

# --------------------------------------------------------------------------
# Value types
# --------------------------------------------------------------------------


def integral_value(v: Any) -> Any:
    """YAML reads ``1e4`` as a float; an integral finite float is a fine int."""
    if isinstance(v, float) and math.isfinite(v) and v.is_integer():
        return int(v)
    return v


def _listify(v: Any) -> Any:
    """Configs built in code may use tuples where YAML gives lists."""
    return list(v) if isinstance(v, tuple) else v


def _rule(check, text: str) -> AfterValidator:
    """A value check whose failure reads ``'<key>' <text>; got <value>``."""

    def run(v: Any) -> Any:
        if not check(v):
            raise PydanticCustomError("rule", "{text}", {"text": text, "value": v})
        return v

    return AfterValidator(run)


def _choice(options: tuple[str, ...]) -> Any:
    return Literal[options]  # type: ignore[valid-type]


Int = Annotated[int, BeforeValidator(integral_value)]
#: scalar floats must be finite (list items are checked by their rules)
Float = Annotated[float, Field(allow_inf_nan=False)]
IntList = Annotated[list[Int], BeforeValidator(_listify)]
FloatList = Annotated[list[float], BeforeValidator(_listify)]
NonEmpty = Annotated[str, _rule(lambda v: v.strip() != "", "must not be empty")]
Path = Optional[Annotated[str, _rule(lambda v: v.strip() != "", "must be a path or null, not an empty string")]]


def _doc(default: Any, doc: str, **constraints: Any) -> Any:
    return Field(default, description=doc, **constraints)


class _Section(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", validate_default=True)


# --------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------


class DataConfig(_Section):
    """COCO-format training and validation sets (relative paths: to the YAML file)."""

    train_json: Path = _doc(None, "COCO-format annotation file (instances JSON) of the training set")
    train_images: Path = _doc(None, "folder of the training images (file_name in the JSON is relative to it)")
    val_json: Path = _doc(None, "COCO-format annotation file of the validation set (null = no evaluation)")
    val_images: Path = _doc(None, "folder of the validation images")
    keep_empty: bool = _doc(False, "keep training images that have no usable instance (as negatives)")
    num_workers: Int = _doc(2, "DataLoader worker processes (0 = load in the main process)", ge=0)
    cache_records: bool = _doc(
        True,
        "keep the training set's parsed records in OUTPUT/cache (keyed on the "
        "file's hash) and map them from there on the next start, in every rank",
    )


class ModelConfig(_Section):
    """Detector, mask head, Mask Switch Module and their losses."""

    head: _choice(HEADS) = _doc("dynamask", "mask head: dynamask (dynamic resolution) or maskrcnn (28x28 baseline)")
    policy: _choice(POLICIES) = _doc("dynamic", "DynaMask resolution policy: dynamic, fixed-14/28/56/112 or size")
    backbone: _choice(BACKBONES) = _doc("resnet50", "ResNet-FPN backbone (torchvision name, e.g. resnet18, resnet50)")
    num_classes: Optional[Int] = _doc(
        None, "object categories, background excluded (null = from the training set)", ge=1
    )
    fam: _choice(FAMS) = _doc("deform", "feature aggregation module of the DynaMask head: deform or conv")
    deform_kernel: _choice(DEFORM_KERNELS) = _doc(
        "auto", "deformable FAM conv: auto (torchvision's op on CUDA, gather elsewhere), gather or torchvision"
    )
    mask_geometry: _choice(MASK_GEOMETRIES) = _doc(
        "exact", "mask cells of a box: exact (continuous box) or torchvision (Mask R-CNN's legacy geometry)"
    )
    mask_targets: _choice(MASK_TARGETS) = _doc(
        "original",
        "training mask targets: original (ground truth at its own resolution, RoIs mapped back onto "
        "it) or resized (bitmaps resized with the image, torchvision's way); the torchvision geometry "
        "always uses resized",
    )
    fpn_channels: Int = _doc(256, "FPN width (torchvision: 256); the CPU configs use less", ge=1)
    box_representation_size: Int = _doc(1024, "box head hidden width (torchvision: 1024)", ge=1)
    head_widths: Optional[
        Annotated[
            Union[str, IntList],
            _rule(
                lambda v: v in WIDTH_PRESETS if isinstance(v, str) else len(v) == 4 and all(x > 0 for x in v),
                f"must be {' or '.join(repr(p) for p in WIDTH_PRESETS)} or 4 positive widths (14, 28, 56, 112)",
            ),
        ]
    ] = _doc(None, "DynaMask widths at 14/28/56/112: balanced, paper or a list of four (null = balanced)")
    head_reduced_channels: Optional[
        Annotated[
            IntList, _rule(lambda v: len(v) == 3 and all(x > 0 for x in v), "must be 3 positive widths (14, 28, 56)")
        ]
    ] = _doc(None, "DynaMask reduced image-feature widths at 14/28/56 (null = those of head_widths)")
    switch: _choice(SWITCHES) = _doc("cost", "Mask Switch Module: cost (regresses selection costs) or paper (authors')")
    paper_switch_signal: _choice(PAPER_SIGNALS) = _doc(
        "edge",
        "what teaches the paper switch quality: edge (the authors': each stage's edge loss against its own "
        "target, stage-weighted) or selection_cost (each stage's mask error against one 112x112 target)",
    )
    refinement: _choice(REFINEMENTS) = _doc(
        "points",
        "DynaMask 56 and 112 stages: points (only the most uncertain points of the upsampled coarser mask "
        "are re-predicted, from features sampled there) or dense (convolutions over the whole map)",
    )
    refinement_points: Int = _doc(
        INFERENCE_POINTS, "points re-predicted per instance at each point stage at inference (refinement: points)", ge=1
    )
    refinement_train_points: Int = _doc(
        TRAINING_POINTS,
        "points supervised per RoI at each point stage in training, importance-sampled (refinement: points)",
        ge=1,
    )
    maskrcnn_head_channels: Int = _doc(256, "conv width of the Mask R-CNN baseline head (torchvision: 256)", ge=1)
    weights_backbone: Path = _doc(None, "local ImageNet checkpoint (.pth) for the backbone (null = random init)")
    init_weights: Path = _doc(None, "dynamask checkpoint whose weights initialise training (fine-tuning)")
    detector_weights: Path = _doc(None, "checkpoint whose detector initialises training; the mask branch is new")
    freeze_detector: bool = _doc(False, "train only the mask branch; the detector keeps its weights and BN stats")
    trainable_backbone_layers: Int = _doc(
        3, "backbone stages trained, counted from the top (5 from random init)", ge=0, le=5
    )
    mask_budget_target: Float = _doc(
        0.5, "training target of the mean mask cost, as a fraction of the largest mask", gt=0, le=1
    )
    mask_budget: Float = _doc(1.0, "test-time budget dial: 1.0 = as trained, lower = cheaper masks", gt=0, le=1)
    mask_score_floor: Float = _doc(
        0.0,
        "detections scoring below this stop at 14x14 without the switch (a control for experiments; 0 = off)",
        ge=0,
        le=1,
    )
    budget_weight: Optional[Float] = _doc(
        None, "weight of the paper's budget hinge (null = 0 for cost, 0.3 for paper)", ge=0
    )
    balance_weight: Optional[Float] = _doc(
        None, "weight of the resolution-balance term (null = 0 for cost, 0.8 for paper)", ge=0
    )
    switch_cost_weight: Float = _doc(1.0, "weight of the switch's regression of each stage's selection cost", ge=0)
    stage_loss_weights: Annotated[
        FloatList,
        _rule(
            lambda v: len(v) == 4 and all(x >= 0 for x in v),
            "must be a list of 4 non-negative weights (stages 14, 28, 56, 112)",
        ),
    ] = _doc([0.25, 0.5, 0.75, 1.0], "mask-loss weight of each refinement stage (14, 28, 56, 112 px)")
    edge_loss_weight: Float = _doc(1.0, "weight of the boundary (edge) mask loss", ge=0)
    select_loss_weight: Float = _doc(0.0, "weight of the paper's Gumbel-softmax selection loss", ge=0)
    gumbel_tau: Float = _doc(0.5, "temperature of the Gumbel-softmax resolution selector", gt=0)
    rpn_pre_nms_top_n_train: Int = _doc(2000, "RPN proposals kept before NMS, per image, in training", ge=1)
    rpn_post_nms_top_n_train: Int = _doc(2000, "RPN proposals kept after NMS, per image, in training", ge=1)
    rpn_pre_nms_top_n_test: Int = _doc(1000, "RPN proposals kept before NMS, per image, at test time", ge=1)
    rpn_post_nms_top_n_test: Int = _doc(1000, "RPN proposals kept after NMS, per image, at test time", ge=1)
    box_batch_size_per_image: Int = _doc(512, "RoIs sampled per image for the box and mask heads in training", ge=1)
    mask_rois_per_image: Optional[Int] = _doc(
        None, "at most this many positive RoIs per image train the mask head (null = all)", ge=1
    )
    box_detections_per_img: Int = _doc(100, "maximum detections per image returned by the detector", ge=1)
    box_score_thresh: Float = _doc(0.05, "detector's minimum class score for a detection to be returned", ge=0, le=1)

    @model_validator(mode="after")
    def _points_need(self, info: ValidationInfo) -> "ModelConfig":
        """Point stages read their targets at exact coordinates and give the switch no dense edges."""
        if info.context and info.context.get("partial") or self.refinement != "points" or self.head != "dynamask":
            return self
        if self.switch == "paper" and self.policy == "dynamic":
            text = (
                "'model.switch' paper cannot be used with 'model.refinement' points: the authors' switch is "
                "trained on every stage's dense edge map, which point stages do not compute (use switch cost, or "
                "refinement dense)"
            )
            raise PydanticCustomError("points_switch", "{text}", {"text": text})
        if self.mask_geometry != "exact":
            text = "'model.refinement' points needs 'model.mask_geometry' exact (or set 'model.refinement' dense)"
            raise PydanticCustomError("points_geometry", "{text}", {"text": text})
        return self


class InputConfig(_Section):
    """Image resizing and training augmentation."""

    min_size: Annotated[
        Union[Int, IntList],
        _rule(
            lambda v: v > 0 if isinstance(v, int) else len(v) > 0 and all(x > 0 for x in v),
            "must be a positive integer or a non-empty list of positive integers",
        ),
    ] = _doc(800, "shorter image side after resizing; a list = random choice per training image, last at test")
    max_size: Int = _doc(1333, "upper bound on the longer image side after resizing", ge=1)
    flip_prob: Float = _doc(0.5, "probability of a horizontal flip in training", ge=0, le=1)
    color_jitter: Float = _doc(0.0, "strength of colour jitter in training (0 = off)", ge=0)

    @model_validator(mode="after")
    def _max_covers_min(self, info: ValidationInfo) -> "InputConfig":
        """Checked on the final config only: a file may set min_size and an override max_size."""
        if info.context and info.context.get("partial"):
            return self
        largest = max(self.min_size) if isinstance(self.min_size, list) else self.min_size
        if self.max_size < largest:
            text = f"'input.max_size' ({self.max_size}) must be >= 'input.min_size' ({inline_value(self.min_size)})"
            raise PydanticCustomError("min_max_size", "{text}", {"text": text})
        return self


class SolverConfig(_Section):
    """Optimiser, learning-rate schedule, precision, checkpoints and logging."""

    optimizer: _choice(OPTIMIZERS) = _doc("sgd", "sgd (with momentum) or adamw")
    base_lr: Float = _doc(0.02, "learning rate for reference_batch images per step (linear scaling rule)", gt=0)
    reference_batch: Int = _doc(16, "batch size base_lr was tuned for", ge=1)
    ims_per_batch: Int = _doc(16, "images per training step (global batch)", ge=1)
    max_iter: Int = _doc(90000, "training iterations (steps)", ge=1)
    momentum: Float = _doc(0.9, "SGD momentum (AdamW: beta1)", ge=0, lt=1)
    weight_decay: Float = _doc(1e-4, "weight decay", ge=0)
    warmup_iters: Int = _doc(500, "linear warm-up length in steps", ge=0)
    warmup_factor: Float = _doc(0.001, "LR multiplier at the first warm-up step", gt=0, le=1)
    steps: Annotated[
        IntList,
        _rule(
            lambda v: all(x > 0 for x in v) and all(a < b for a, b in zip(v, v[1:])),
            "must be a strictly increasing list of positive step numbers",
        ),
    ] = _doc([60000, 80000], "steps at which the LR is multiplied by gamma")
    gamma: Float = _doc(0.1, "LR decay factor at each of solver.steps", gt=0)
    clip_grad_norm: Optional[Annotated[Float, _rule(lambda v: v > 0, "must be > 0 (or null to disable clipping)")]] = (
        _doc(None, "clip the gradient norm to this value (null = no clipping)")
    )
    switch_lr_multiplier: Float = _doc(10.0, "learning rate of the Mask Switch Module relative to base_lr", gt=0)
    amp: _choice(AMP_MODES) = _doc("none", "mixed precision: none, bf16 or fp16 (fp16 uses a gradient scaler)")
    checkpoint_period: Int = _doc(5000, "save a checkpoint every N steps (0 = only at the end)", ge=0)
    log_period: Int = _doc(20, "log losses every N steps", ge=1)
    max_nonfinite_steps: Int = _doc(10, "abort after this many consecutive steps with a non-finite loss", ge=0)
    dist_timeout_s: Float = _doc(
        1800.0,
        "multi-process runs: seconds a collective waits for a hung process before every rank stops with an error",
        gt=0,
    )


class TestConfig(_Section):
    """Evaluation during and after training."""

    eval_period: Int = _doc(0, "evaluate on the validation set every N steps (0 = only at the end)", ge=0)
    max_dets: Int = _doc(100, "detections kept per image at test time (COCO AP uses 100)", ge=1)
    score_thresh: Float = _doc(0.05, "minimum score of a detection kept at test time", ge=0, le=1)


class Config(_Section):
    """A whole dynamask configuration."""

    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    input: InputConfig = Field(default_factory=InputConfig)
    solver: SolverConfig = Field(default_factory=SolverConfig)
    test: TestConfig = Field(default_factory=TestConfig)
    seed: Int = _doc(0, "random seed (Python, NumPy, torch)")
    output_dir: NonEmpty = _doc("output", "where checkpoints, logs and the resolved config go (relative: to the CWD)")


# --------------------------------------------------------------------------
# What the rest of the package reads off the schema
# --------------------------------------------------------------------------


def inline_value(v: Any) -> str:
    """A value as in an error message: strings quoted, the rest as inline YAML."""
    return (
        repr(v)
        if isinstance(v, str)
        else yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("...").strip()
    )


def _walk_fields(model: type[BaseModel], prefix: str = ""):
    for name, field in model.model_fields.items():
        sub = field.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            yield prefix + name, field, sub
            yield from _walk_fields(sub, f"{prefix}{name}.")
        else:
            yield prefix + name, field, None


#: dotted leaf key -> its pydantic field, in definition order
FIELDS: dict[str, FieldInfo] = {k: f for k, f, sub in _walk_fields(Config) if sub is None}
#: dotted section name -> its model class
SECTIONS: dict[str, type[BaseModel]] = {k: sub for k, _, sub in _walk_fields(Config) if sub is not None}

DEFAULTS: dict[str, Any] = Config().model_dump()

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


def _shape(tp: Any) -> str:
    """'int', 'list_int', 'str_or_list_int', ... of a (non-null) annotation."""
    while typing.get_origin(tp) is Annotated:
        tp = typing.get_args(tp)[0]
    origin = typing.get_origin(tp)
    if origin is Union:
        return "_or_".join(_shape(a) for a in typing.get_args(tp))
    if origin is Literal:
        return "str"
    if origin is list:
        return "list_" + _shape(typing.get_args(tp)[0])
    return {int: "int", float: "float", str: "str", bool: "bool"}[tp]


def kind(key: str) -> tuple[str, bool, Optional[tuple[str, ...]]]:
    """(type name for messages, nullable, allowed choices or None) of a leaf key."""
    tp = FIELDS[key].annotation
    args = typing.get_args(tp)
    nullable = typing.get_origin(tp) is Union and type(None) in args
    if nullable:
        tp = next(a for a in args if a is not type(None))
    choices = typing.get_args(tp) if typing.get_origin(tp) is Literal else None
    return _shape(tp), nullable, choices


def kind_name(shape: str) -> str:
    return _KIND_NAMES[shape]


def bounds_text(key: str) -> str:
    """The ``Field(ge=..., lt=...)`` bounds of a key in words, e.g. 'must be in (0, 1]'."""
    b = {n: getattr(m, n) for m in FIELDS[key].metadata for n in ("gt", "ge", "lt", "le") if hasattr(m, n)}
    lo, hi = b.get("gt", b.get("ge")), b.get("lt", b.get("le"))
    if hi is None:
        return f"must be {'>' if 'gt' in b else '>='} {lo}"
    if kind(key)[0] == "int":
        return f"must be between {lo} and {hi}"
    return f"must be in {'(' if 'gt' in b else '['}{lo}, {hi}{')' if 'lt' in b else ']'}"


def doc(key: str) -> str:
    """The one-line description of a leaf key or a section."""
    if key in SECTIONS:
        return (SECTIONS[key].__doc__ or "").strip().splitlines()[0].rstrip(".")
    return FIELDS[key].description or ""
