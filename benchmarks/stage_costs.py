"""Per-instance mask-head cost of stopping at each resolution, from the FLOPs table
(layer shapes), as a fraction of the full 112 path.

    python benchmarks/stage_costs.py [--num-classes 81]
"""

import argparse

from dynamask.models.dynamask_head import DynaMaskHead
from dynamask.models.maskrcnn_head import MaskRCNNBranch


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-classes", type=int, default=81, help="including background (COCO: 81)")
    args = parser.parse_args(argv)
    baseline = MaskRCNNBranch(args.num_classes).flops_table()["cumulative"][0]
    print(f"Mask R-CNN 28x28 head: {baseline / 1e6:.1f} MFLOPs per instance")
    for fam in ("deform", "conv"):
        table = DynaMaskHead(args.num_classes, "dynamic", fam=fam).flops_table()
        full = table["cumulative_with_switch"][-1]
        print(f"\nDynaMask, FAM={fam}: shared part {table['shared'] / 1e6:.1f} MFLOPs, "
              f"switch {table['switch'] / 1e6:.2f} MFLOPs ({100 * table['switch'] / full:.2f} % of the full path)")
        print(f"{'stop at':>8s} {'MFLOPs':>9s} {'of 112 path':>12s} {'vs Mask R-CNN':>14s}")
        for r, c in zip(table["resolutions"], table["cumulative_with_switch"]):
            print(f"{r:>8d} {c / 1e6:9.1f} {100 * c / full:11.1f}% {c / baseline:13.2f}x")


if __name__ == "__main__":
    main()
