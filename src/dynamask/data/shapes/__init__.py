"""Synthetic "shapes" instance-segmentation dataset with controlled outline complexity.

Eight categories by default, one shape family each, plus six "detail" families
(ids 9-14) with ``detail=True``:

=====  ===========  ==========  ==============================================
id     name         group       outline
=====  ===========  ==========  ==============================================
1      ellipse      easy        smooth ellipse
2      rectangle    easy        rotated rectangle
3      triangle     easy        random (non-degenerate) triangle
4      star         hard        7-13 sharp spikes
5      gear         hard        8-14 trapezoidal teeth
6      blob         hard        Fourier-perturbed radius (wiggly outline)
7      ring         hard        annulus (mask with a hole)
8      cross        hard        thin plus-sign cross or thin L shape
9      spider       detail      body with 6-10 thin bent legs (+ antennae)
10     wheel        detail      thin rim, hub and 4-16 thin spokes
11     comb         detail      comb with many thin teeth, or fork with prongs
12     tree         detail      branching tree of strokes thinning to twigs
13     sieve        detail      plate perforated by many small holes or slots
14     scribble     detail      handwritten-like curve or cursive loops
=====  ===========  ==========  ==============================================

The eight simple categories are smooth relative to their box: cropped to the
box at 28x28 and pasted back they keep IoU ~0.99. The detail families carry
thin parts of an *absolute* width (legs, spokes, teeth, twigs, webs between
holes, strokes about 2.5-5 px wide, whatever the object size), as real objects
do, so that a 28x28 grid over a 100-200 px box cannot represent them while a
112x112 grid can (see :mod:`dynamask.evaluation.yardstick`). ``detail=False`` (the
default) renders exactly what it always did and writes the eight categories
only; ``detail=True`` draws each object from a simple family with probability
0.45 and from a detail family otherwise (detail objects are at least a quarter
of the image side across, so about 64-205 px at 256 px where the simple ones
are 20-205 px), and writes all 14 categories.

Objects are painted in order, later ones occluding earlier ones; each
annotation stores the *visible* mask only, and objects whose visible part is
too small are removed entirely (neither painted nor annotated), so every
painted object is annotated and vice versa.

Every image is rendered from its own random generator seeded with
``(seed, split, index)``: a dataset is deterministic by seed, a smaller dataset
is a prefix of a larger one with the same seed, and :func:`make_shapes_tensors`
returns exactly the first training images of :func:`generate_shapes_dataset`.

The package, one part per module: :mod:`.basic` and :mod:`.detail` draw the outlines of the two
kinds of families, :mod:`.raster` turns them into masks, :mod:`.scene` composes an image
(background, placement, occlusion, colours), :mod:`.dataset` seeds each image and writes the COCO
files (or returns tensors), and :mod:`.complexity` measures an outline's complexity.
"""

from __future__ import annotations

from .basic import SHAPE_CATEGORIES
from .complexity import complexity_of_mask
from .dataset import generate_shapes_dataset, image_rng, make_shapes_tensors, shape_categories
from .detail import DETAIL_CATEGORIES
from .scene import render_shapes_image

__all__ = [
    "DETAIL_CATEGORIES",
    "SHAPE_CATEGORIES",
    "complexity_of_mask",
    "generate_shapes_dataset",
    "image_rng",
    "make_shapes_tensors",
    "render_shapes_image",
    "shape_categories",
]
