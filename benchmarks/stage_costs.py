"""Per-instance mask-head cost of stopping at each resolution, from the FLOPs table (layer
shapes), as a fraction of the full 112 path — for both width presets and both switches.

    python benchmarks/stage_costs.py [--num-classes 81] [--fpn-channels 256]
"""

import argparse
import warnings

from dynamask.models.dynamask_head import DynaMaskHead
from dynamask.models.maskrcnn_head import MaskRCNNBranch


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-classes", type=int, default=81, help="including background (COCO: 81)")
    parser.add_argument("--fpn-channels", type=int, default=256, help="FPN width (torchvision: 256)")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")  # default budget targets below a preset's reachable minimum
    baseline = MaskRCNNBranch(args.num_classes, args.fpn_channels).flops_table()["cumulative"][0]
    print(f"Mask R-CNN 28x28 head: {baseline / 1e6:.1f} MFLOPs per instance")
    for widths in ("balanced", "paper"):
        for fam in ("deform", "conv"):
            for switch in ("cost", "paper"):
                head = DynaMaskHead(
                    args.num_classes,
                    "dynamic",
                    in_channels=args.fpn_channels,
                    widths=widths,
                    fam=fam,
                    switch=switch,
                    refinement="dense",
                )
                table = head.flops_table()
                full = table["cumulative_with_switch"][-1]
                print(
                    f"\nwidths={widths} {head.widths}, FAM={fam}, switch={switch}: shared part "
                    f"{table['shared'] / 1e6:.1f} MFLOPs, switch {table['switch'] / 1e6:.2f} MFLOPs "
                    f"({100 * table['switch'] / full:.2f} % of the full path)"
                )
                print(f"{'stop at':>8s} {'MFLOPs':>9s} {'of 112 path':>12s} {'vs Mask R-CNN':>14s}")
                for r, c in zip(table["resolutions"], table["cumulative_with_switch"]):
                    print(f"{r:>8d} {c / 1e6:9.1f} {100 * c / full:11.1f}% {c / baseline:13.2f}x")


if __name__ == "__main__":
    main()
