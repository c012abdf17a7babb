"""``dynamask shapes``: write the synthetic COCO-format shapes dataset and print the yardstick of its
validation split."""

from __future__ import annotations

import argparse
import os

from .arguments import non_negative_int, positive_int
from .exit_status import EXIT_OK


def add_shapes(sub, common) -> None:
    p = sub.add_parser(
        "shapes",
        parents=[common],
        help="generate the synthetic shapes dataset (COCO format)",
        description="Write a synthetic COCO-format shapes dataset: OUT/{train,val}/*.png and "
        "OUT/{train,val}.json, then print the yardstick of the validation split: "
        "the mean round-trip mask IoU and boundary IoU of its ground truth cropped "
        "to the box at 14/28/56/112 and pasted back (the ceiling of a mask head "
        "at that resolution).",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--train", type=non_negative_int, default=200, metavar="N", help="training images (default 200)")
    p.add_argument("--val", type=non_negative_int, default=50, metavar="M", help="validation images (default 50)")
    p.add_argument("--size", type=positive_int, default=128, metavar="S", help="image side in pixels (default 128)")
    p.add_argument("--seed", type=int, default=0, metavar="K", help="random seed (default 0)")
    p.add_argument(
        "--detail",
        action="store_true",
        help="add the six detail families (categories 9-14: thin legs, spokes, teeth, twigs, holes, "
        "strokes a few pixels wide) that a 28x28 mask cannot represent; try --size 256",
    )
    p.set_defaults(func=cmd_shapes)


def cmd_shapes(args: argparse.Namespace) -> int:
    from ..data import generate_shapes_dataset

    summary = generate_shapes_dataset(
        args.out, args.train, args.val, image_size=args.size, seed=args.seed, detail=args.detail
    )
    n_img, n_ann = summary.get("num_images", {}), summary.get("num_annotations", {})
    print(f"wrote the shapes dataset to {os.path.abspath(args.out)}")
    for split in ("train", "val"):
        print(
            f"  {split}: {n_img.get(split, 0)} images, {n_ann.get(split, 0)} instances -> "
            f"{summary.get(split + '_json')} (images in {summary.get(split + '_dir')})"
        )
    names = [c["name"] for c in summary.get("categories", [])]
    if names:
        print(f"  {len(names)} categories: {', '.join(names)}")
    if n_ann.get("val", 0):
        from ..evaluation.yardstick import yardstick_from_coco

        ys = yardstick_from_coco(summary["val_json"])
        print(f"yardstick (val, {ys.geometry} geometry, {ys.num_instances} instances): {ys.format()}")
    return EXIT_OK
