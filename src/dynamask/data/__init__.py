"""Data layer: COCO-format loading, transforms, the synthetic shapes dataset and the round-trip yardstick."""

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
from .yardstick import Yardstick, boundary_iou, mask_boundary, yardstick, yardstick_from_coco

__all__ = [
    "DETAIL_CATEGORIES",
    "SHAPE_CATEGORIES",
    "SKIP_REASONS",
    "CocoInstanceDataset",
    "Yardstick",
    "DatasetError",
    "boundary_iou",
    "build_transforms",
    "collate_fn",
    "complexity_of_mask",
    "generate_shapes_dataset",
    "load_coco_json",
    "load_image",
    "make_shapes_tensors",
    "mask_boundary",
    "render_shapes_image",
    "segmentation_to_rle",
    "shape_categories",
    "target_fields_getter",
    "yardstick",
    "yardstick_from_coco",
]
