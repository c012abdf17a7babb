"""Data layer: COCO-format loading, transforms and the synthetic shapes dataset. (The round-trip
yardstick moved to :mod:`dynamask.evaluation.yardstick`; its old names here still work and warn.)"""

from ..moved import moved_names
from .coco import (
    SKIP_REASONS,
    CocoInstanceDataset,
    DatasetError,
    collate_fn,
    load_coco_json,
    load_image,
    segmentation_to_rle,
)
from .shapes import (
    DETAIL_CATEGORIES,
    SHAPE_CATEGORIES,
    complexity_of_mask,
    generate_shapes_dataset,
    make_shapes_tensors,
    render_shapes_image,
    shape_categories,
)
from .transforms import build_transforms, target_fields_getter

__all__ = [
    "DETAIL_CATEGORIES",
    "SHAPE_CATEGORIES",
    "SKIP_REASONS",
    "CocoInstanceDataset",
    "DatasetError",
    "build_transforms",
    "collate_fn",
    "complexity_of_mask",
    "generate_shapes_dataset",
    "load_coco_json",
    "load_image",
    "make_shapes_tensors",
    "render_shapes_image",
    "segmentation_to_rle",
    "shape_categories",
    "target_fields_getter",
]

__getattr__ = moved_names(
    __name__,
    "dynamask.evaluation.yardstick",
    ("Yardstick", "boundary_iou", "mask_boundary", "yardstick", "yardstick_from_coco"),
)
