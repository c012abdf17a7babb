"""`dynamask demo`: the shipped models evaluated (no training), verdicts computed from the numbers."""

import copy
import json

import pytest

from dynamask.cli import main
from dynamask.data import generate_shapes_dataset
from dynamask.engine.demo import (
    FIXED_28,
    FIXED_112,
    GATED_112,
    dial_budgets,
    gallery_images,
    shipped_files,
    verdict_sentences,
)
from dynamask.errors import DynaMaskError

ROWS = [
    {
        "name": "dynamic",
        "segm_AP": 50.0,
        "boundary_AP": 40.0,
        "bbox_AP": 65.7,
        "mask_gflops_per_instance": 0.20,
        "complexity_spearman": 0.61,
        "complexity_spearman_within_size": 0.55,
    },
    {
        "name": "dynamic, budget 0.5",
        "segm_AP": 49.0,
        "boundary_AP": 38.0,
        "bbox_AP": 65.7,
        "mask_gflops_per_instance": 0.15,
    },
    {
        "name": "dynamic, budget 0.3",
        "segm_AP": 47.0,
        "boundary_AP": 35.0,
        "bbox_AP": 65.7,
        "mask_gflops_per_instance": 0.10,
    },
    {"name": FIXED_28, "segm_AP": 46.0, "boundary_AP": 33.0, "bbox_AP": 65.7, "mask_gflops_per_instance": 0.09},
    {"name": FIXED_112, "segm_AP": 50.5, "boundary_AP": 40.2, "bbox_AP": 65.7, "mask_gflops_per_instance": 0.40},
    {
        "name": GATED_112,
        "segm_AP": 48.0,
        "boundary_AP": 37.5,
        "bbox_AP": 65.7,
        "mask_gflops_per_instance": 0.20,
        "score_floor": 0.42,
    },
    {"name": "Mask R-CNN", "segm_AP": 45.0, "boundary_AP": 32.0, "bbox_AP": 65.7, "mask_gflops_per_instance": 0.08},
]


def _by(rows):
    return {r["name"]: r for r in rows}


def test_verdicts_follow_the_numbers():
    text = " ".join(verdict_sentences(ROWS))
    assert "same detector (bbox AP 65.7)" in text
    assert "Mask R-CNN head: ahead by 5.0 segm AP (50.0 vs 45.0), ahead by 8.0 boundary AP" in text
    assert "at 2.50× its mask-head FLOPs" in text
    assert "(fixed-112): behind by 0.5 segm AP (50.0 vs 50.5), behind by 0.2 boundary AP" in text
    assert "at 0.50× its mask-head FLOPs" in text
    assert "(score-gated fixed-112): ahead by 2.0 segm AP (50.0 vs 48.0), ahead by 2.5 boundary AP" in text
    assert "at 1.00× its mask-head FLOPs" in text
    assert "budget 0.5 costs 25 % less (0.150 GFLOPs) for -1.0 segm AP and -2.0 boundary AP" in text
    assert "budget 0.3 costs 50 % less" in text and "did not lower" not in text
    assert "ρ" in text and "0.61" in text and "within object-size bins 0.55" in text


def test_verdicts_change_when_the_numbers_are_swapped():
    rows = copy.deepcopy(ROWS)
    by = _by(rows)
    # the baseline ahead, fixed-112 behind, the detector differing, the dial going the wrong way
    by["Mask R-CNN"]["segm_AP"], by["dynamic"]["segm_AP"] = by["dynamic"]["segm_AP"], by["Mask R-CNN"]["segm_AP"]
    by["Mask R-CNN"]["boundary_AP"] = by["dynamic"]["boundary_AP"]
    by[FIXED_112]["segm_AP"] = 40.0
    by["Mask R-CNN"]["bbox_AP"] = 59.7
    by["dynamic, budget 0.3"]["mask_gflops_per_instance"] = 0.25
    text = " ".join(verdict_sentences(rows))
    assert "Mask R-CNN head: behind by 5.0 segm AP (45.0 vs 50.0), level in boundary AP (40.0 vs 40.0)" in text
    assert "(fixed-112): ahead by 5.0 segm AP (45.0 vs 40.0)" in text
    assert "bbox AP differs by 6.0 (59.7–65.7)" in text and "same detector" not in text
    assert "budget 0.3 costs 25 % more" in text and "did not lower the cost" in text


def test_verdicts_without_dial_room_say_so():
    rows = [r for r in ROWS if "budget" not in r["name"]]
    assert any("no room" in s for s in verdict_sentences(rows))


def test_dial_budgets_are_evenly_spaced_inside_the_reachable_range():
    assert dial_budgets(0.12, 0.42) == [0.32, 0.22]
    lo, hi = 0.1, 0.7
    a, b = dial_budgets(lo, hi)
    assert lo < b < a < hi and a - b == pytest.approx(b - lo, abs=1e-3) == pytest.approx(hi - a, abs=1e-3)
    assert dial_budgets(0.12, 0.13) == []


def test_gallery_prefers_images_with_large_simple_and_detailed_objects(tmp_path):
    data = generate_shapes_dataset(tmp_path, 0, 12, image_size=256, seed=0, detail=True)
    picked = gallery_images(data["val_json"], 3)
    coco = json.loads(open(data["val_json"]).read())
    detail = {c["id"] for c in coco["categories"] if c["supercategory"] == "detail"}

    def score(image):  # the smaller of the largest simple and the largest detailed box side
        anns = [a for a in coco["annotations"] if a["image_id"] == image["id"]]
        sides = {
            kind: [(a["bbox"][2] * a["bbox"][3]) ** 0.5 for a in anns if (a["category_id"] in detail) == kind]
            for kind in (True, False)
        }
        return min(max(sides[True], default=0), max(sides[False], default=0))

    scores = sorted((score(im) for im in coco["images"]), reverse=True)
    by_name = {im["file_name"]: score(im) for im in coco["images"]}
    assert [by_name[n] for n in picked] == scores[:3]
    assert scores[0] >= 48 and len(set(picked)) == 3


def test_missing_shipped_files_are_named(tmp_path):
    with pytest.raises(DynaMaskError) as info:
        shipped_files(tmp_path)
    assert "shapes_detail_dynamask_c64.pt" in str(info.value) and "checkpoints/README.md" in str(info.value)


def test_demo_quick_on_the_shipped_checkpoints(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out), "--no-progress"]) == 0
    report = (out / "report.md").read_text()
    assert "| dynamic |" in report and "| Mask R-CNN |" in report and "Quick mode" in report
    for name in ("ap_vs_flops.png", "gallery.png", "results.json"):
        assert (out / name).stat().st_size > 0
    results = json.loads((out / "results.json").read_text())
    names = [r["name"] for r in results["rows"]]
    assert names[0] == "dynamic" and names[-4:] == [FIXED_28, FIXED_112, GATED_112, "Mask R-CNN"]
    dyn, gated = results["rows"][0], results["rows"][-2]
    assert 0 < gated["score_floor"] <= 1  # the control costs what dynamic costs, as near as a floor gets
    assert abs(gated["mask_gflops_per_instance"] / dyn["mask_gflops_per_instance"] - 1) < 0.5
    budgets = [r["budget"] for r in results["rows"] if r["name"].startswith("dynamic, budget")]
    reach = results["dial_reachable_range"]
    assert all(reach["lowest"] < b < reach["unconstrained"] for b in budgets)
    assert len({r["bbox_AP"] for r in results["rows"]}) == 1  # one detector under every row
    assert results["verdicts"] == verdict_sentences(results["rows"])
    assert len(list((out / "eval").glob("*/metrics.json"))) == len(names)
    assert "report written to" in capsys.readouterr().out
