"""Data layer: COCO-format loading, transforms and the synthetic shapes dataset."""

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
    SHAPE_CATEGORIES,
    complexity_of_mask,
    generate_shapes_dataset,
    make_shapes_tensors,
    render_shapes_image,
)
from .transforms import build_transforms, target_fields_getter

__all__ = [
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
    "target_fields_getter",
]
