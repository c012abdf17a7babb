"""Side-by-side table of the accuracy-against-cost benchmark in the legacy and the exact mask
geometry, from the two committed result files (no model is run):

    python benchmarks/compare_geometry.py
    python benchmarks/compare_geometry.py --legacy A.json --exact B.json

Prints a Markdown table (per model: segm AP, AP75, boundary AP in both geometries) and the gaps
fixed-112 − fixed-28 and dynamic − Mask R-CNN.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
NAMES = {"maskrcnn": "Mask R-CNN head (28×28)", "size": "size rule (on fixed-112)"}


def load(path: Path) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def table(legacy: dict, exact: dict) -> str:
    lines = [
        "| model | segm AP legacy → exact | AP75 legacy → exact | boundary AP legacy → exact | mask GFLOPs / inst (exact) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, new in exact["models"].items():
        old = legacy["models"].get(name)
        if old is None:
            continue
        cells = [f"{old[k]:.1f} → {new[k]:.1f} ({new[k] - old[k]:+.1f})" for k in ("segm_AP", "AP75", "boundary_AP")]
        label = NAMES.get(name, name if not name.startswith("fixed") else f"r-FPN {name}")
        lines.append(f"| {label} | {' | '.join(cells)} | {new['mask_gflops_per_instance']:.3f} |")
    return "\n".join(lines)


def gaps(results: dict) -> dict:
    m = results["models"]
    out = {"fixed-112 − fixed-28": {k: m["fixed-112"][k] - m["fixed-28"][k] for k in ("segm_AP", "boundary_AP")}}
    for name in m:
        if name.startswith("dynamic@"):
            out[f"{name} − Mask R-CNN"] = {k: m[name][k] - m["maskrcnn"][k] for k in ("segm_AP", "boundary_AP")}
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--legacy", type=Path, default=RESULTS / "accuracy_vs_cost_legacy_geometry.json")
    p.add_argument("--exact", type=Path, default=RESULTS / "accuracy_vs_cost.json")
    args = p.parse_args(argv)
    legacy, exact = load(args.legacy), load(args.exact)
    print(table(legacy, exact))
    print()
    print("| gap (segm AP / boundary AP) | legacy | exact |")
    print("|---|---:|---:|")
    old, new = gaps(legacy), gaps(exact)
    for name, g in new.items():
        o = old.get(name)
        before = f"{o['segm_AP']:+.1f} / {o['boundary_AP']:+.1f}" if o else "–"
        print(f"| {name} | {before} | {g['segm_AP']:+.1f} / {g['boundary_AP']:+.1f} |")


if __name__ == "__main__":
    main()
