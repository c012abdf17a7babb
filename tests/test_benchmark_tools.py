"""The 256-px benchmark's bookkeeping (partial head state kept in the repository between sessions)
and the oracle switch's choice under a FLOPs target — pure functions, no training."""

import argparse
import json
import os
from pathlib import Path

import pytest
import torch
from benchmark_module import load_benchmark

ROOT = Path(__file__).resolve().parents[1]


def _same(a, b, where=""):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert set(a) == set(b), where
        for k in a:
            _same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def test_partial_head_state_round_trip(tmp_path):
    """An unfinished head's checkpoint is kept without the frozen detector and rebuilt bit for bit."""
    bench = load_benchmark("accuracy_vs_cost_256")
    from dynamask.engine.build import load_checkpoint, save_checkpoint

    g = torch.Generator().manual_seed(0)
    detector_state = {"backbone.w": torch.randn(8, 4, generator=g).half(), "rpn.b": torch.randn(3, generator=g).half()}
    detector = tmp_path / "detector.pt"
    save_checkpoint(str(detector), {"model": detector_state, "detector_only": True})
    model = {k: v.float() for k, v in detector_state.items()}
    model["roi_heads.mask_branch.conv.weight"] = torch.randn(5, 5, generator=g)
    ckpt = {
        "model": model,
        "optimizer": {"state": {0: {"exp_avg": torch.randn(5, 5, generator=g)}}},
        "scheduler": {"last_epoch": 375},
        "iteration": 375,
        "config": {"seed": 0},
        "rng": {"world_size": 1, "states": [{"torch": torch.get_rng_state()}]},
    }
    run_dir = tmp_path / "runs" / "fixed-56"
    run_dir.mkdir(parents=True)
    save_checkpoint(str(run_dir / "checkpoint_last.pt"), ckpt)
    (run_dir / "metrics.jsonl").write_text('{"iteration": 20}\n')
    (run_dir / "train.log").write_text("log\n")

    args = argparse.Namespace(out=tmp_path / "runs", heads=tmp_path / "heads")
    packed = bench.save_partial(args, detector, "fixed-56")
    kept = torch.load(packed, weights_only=True)
    assert set(kept["model"]) == {"roi_heads.mask_branch.conv.weight"}  # the detector is not stored again

    again = argparse.Namespace(out=tmp_path / "elsewhere", heads=tmp_path / "heads")
    bench.restore_partial(again, detector, "fixed-56")
    restored = load_checkpoint(str(tmp_path / "elsewhere" / "fixed-56" / "checkpoint_last.pt"))
    original = load_checkpoint(str(run_dir / "checkpoint_last.pt"))
    _same(
        {k: v for k, v in original.items() if k != "versions"}, {k: v for k, v in restored.items() if k != "versions"}
    )
    assert (tmp_path / "elsewhere" / "fixed-56" / "metrics.jsonl").read_text() == '{"iteration": 20}\n'

    # a run whose "frozen" detector moved cannot be kept this way
    model["backbone.w"] = model["backbone.w"] + 1
    save_checkpoint(str(run_dir / "checkpoint_last.pt"), {**ckpt, "model": model})
    with pytest.raises(SystemExit, match="backbone.w"):
        bench.save_partial(args, detector, "fixed-56")
    # nor restored onto another detector
    save_checkpoint(str(detector), {"model": {k: v + 1 for k, v in detector_state.items()}})
    with pytest.raises(SystemExit, match="another detector"):
        bench.restore_partial(again, detector, "fixed-56")


def test_oracle_choices_meet_the_flops_target():
    oracle = load_benchmark("oracle_switch")
    stage_gflops = torch.tensor([0.05, 0.1, 0.2, 0.4])
    # image 1: a detection best at 112, one equally good everywhere, one unmatched; image 2: best at 28
    costs = [
        torch.tensor([[1.0, 0.6, 0.2, 0.0], [0.3, 0.3, 0.3, 0.3], [0.0, 0.0, 0.0, 0.0]]),
        torch.tensor([[0.9, 0.1, 0.1, 0.1]]),
    ]
    matched = [torch.tensor([True, True, False]), torch.tensor([True])]
    learnt = [torch.tensor([1, 1, 2]), torch.tensor([3])]  # the switch's own choices
    per_image = list(zip(costs, matched, learnt))

    free, _ = oracle.oracle_choices(per_image, stage_gflops, target_gflops=1.0, unmatched="14")
    assert free[0].tolist() == [3, 0, 0] and free[1].tolist() == [1]  # best stage, cheapest among equals
    for target in (0.06, 0.1, 0.15):
        picks, _ = oracle.oracle_choices(per_image, stage_gflops, target_gflops=target, unmatched="14")
        flat = torch.cat(picks)
        assert float(stage_gflops[flat].mean()) <= target + 1e-9
        assert flat[2] == 0  # an unmatched detection stops at 14
    tight, _ = oracle.oracle_choices(per_image, stage_gflops, target_gflops=0.05, unmatched="14")
    assert torch.cat(tight).tolist() == [0, 0, 0, 0]
    # by default an unmatched detection keeps the switch's choice (a switch cannot know it is false)
    kept, _ = oracle.oracle_choices(per_image, stage_gflops, target_gflops=1.0)
    assert kept[0].tolist() == [3, 0, 2] and kept[1].tolist() == [1]
    budget = float(stage_gflops[torch.tensor([0, 0, 2, 0])].mean())
    cheap, _ = oracle.oracle_choices(per_image, stage_gflops, target_gflops=budget)
    assert torch.cat(cheap).tolist() == [0, 0, 2, 0]


def test_evaluation_results_are_kept_per_head_and_redone_when_anything_changes(tmp_path, monkeypatch):
    """A head's evaluation is reused only for the same weights, validation data and policies."""
    base = load_benchmark("accuracy_vs_cost")
    import dynamask.data
    import dynamask.engine.evaluate as evaluate_module

    calls = []

    def fake_evaluate(weights, dataset, policy, device, progress, budget=None):
        calls.append((Path(weights).name, policy, budget))
        return {"segm_AP": float(len(calls)), "boundary_AP": 1.0, "mask_gflops_per_instance": 0.1}

    monkeypatch.setattr(evaluate_module, "evaluate", fake_evaluate)
    monkeypatch.setattr(dynamask.data, "CocoInstanceDataset", lambda *a, **k: "dataset")
    (tmp_path / "val.json").write_text("{}")
    heads = tmp_path / "heads"
    heads.mkdir()
    for name in ("fixed-112", "dynamic@0.4"):
        (heads / f"{name}.pt").write_bytes(name.encode())
    specs = [
        {
            "name": "fixed-112",
            "evals": [("fixed-112", "fixed-112"), ("size", "size")],
            "weights": heads / "fixed-112.pt",
        },
        {"name": "dynamic@0.4", "evals": [("dynamic@0.4", "dynamic")], "weights": heads / "dynamic@0.4.pt"},
        {"name": "fixed-14", "evals": [("fixed-14", "fixed-14")], "weights": heads / "fixed-14.pt"},
    ]
    args = argparse.Namespace(data=tmp_path, jobs=1, threads=1)
    cache = lambda spec: heads / f"{spec['name']}.eval.json"  # noqa: E731

    models, dial = base.evaluate_all(specs, args, tmp_path, cache=cache, only_ready=True)  # fixed-14 not trained yet
    assert set(models) == {"fixed-112", "size", "dynamic@0.4"} and len(dial) == len(base.DIAL)
    assert len(calls) == 3 + len(base.DIAL)
    first = (models, dial)

    (heads / "fixed-14.pt").write_bytes(b"fixed-14")
    models, dial = base.evaluate_all(specs, args, tmp_path, cache=cache)
    assert calls[-1] == ("fixed-14.pt", "fixed-14", None) and len(calls) == 4 + len(base.DIAL)  # only the new head
    assert {k: models[k] for k in first[0]} == first[0] and dial == first[1]

    (heads / "fixed-112.pt").write_bytes(b"retrained")  # new weights: evaluated again
    base.evaluate_all(specs, args, tmp_path, cache=cache)
    assert len(calls) == 6 + len(base.DIAL) and calls[-1] == ("fixed-112.pt", "size", None)
    (tmp_path / "val.json").write_text('{"images": []}')  # other validation data: everything again
    base.evaluate_all(specs, args, tmp_path, cache=cache)
    assert len(calls) == 2 * (6 + len(base.DIAL)) - 2


def test_a_retired_head_keeps_its_results_without_its_weights(tmp_path, monkeypatch):
    """A head whose weights the repository no longer keeps is read from its evaluation file, for
    the same validation data and policies only; it is never evaluated (there is nothing to run)."""
    base = load_benchmark("accuracy_vs_cost")
    import dynamask.data
    import dynamask.engine.evaluate as evaluate_module

    calls = []
    monkeypatch.setattr(
        evaluate_module,
        "evaluate",
        lambda weights, **kw: (
            calls.append(weights) or {"segm_AP": 1.0, "boundary_AP": 1.0, "mask_gflops_per_instance": 0.1}
        ),
    )
    monkeypatch.setattr(dynamask.data, "CocoInstanceDataset", lambda *a, **k: "dataset")
    (tmp_path / "val.json").write_text("{}")
    heads = tmp_path / "heads"
    heads.mkdir()
    (heads / "paper@0.6.pt").write_bytes(b"weights")
    specs = [{"name": "paper@0.6", "evals": [("paper@0.6", "dynamic")], "weights": heads / "paper@0.6.pt"}]
    args = argparse.Namespace(data=tmp_path, jobs=1, threads=1)
    cache = lambda spec: heads / f"{spec['name']}.eval.json"  # noqa: E731
    first, _ = base.evaluate_all(specs, args, tmp_path, cache=cache)
    (heads / "paper@0.6.pt").unlink()
    again, _ = base.evaluate_all(specs, args, tmp_path, cache=cache)
    assert again == first and len(calls) == 1
    (tmp_path / "val.json").write_text('{"images": []}')
    with pytest.raises(SystemExit, match="no head file"):
        base.evaluate_all(specs, args, tmp_path, cache=cache)


def test_markdown_tables_show_the_results_numbers():
    bench = load_benchmark("accuracy_vs_cost_256")

    def model(ap, g, hist, **extra):
        return {
            "segm_AP": ap,
            "AP50": 60.0,
            "AP75": 40.0,
            "APs": None,
            "APm": 41.0,
            "APl": 55.0,
            "boundary_AP": ap - 10,
            "mask_gflops_per_instance": g,
            "resolution_histogram": hist,
            "params": 123456,
            **extra,
        }

    result = {
        "models": {
            "fixed-112": model(44.2, 0.4, {"112": 10}, trained_as="fixed-112"),
            "size": model(40.0, 0.2, {"28": 5, "112": 5}, trained_as="fixed-112", rho=0.1),
            "dynamic@0.4": model(
                42.3,
                0.1,
                {"14": 1, "28": 2, "56": 3, "112": 4},
                switch="cost",
                trained_as="dynamic@0.4",
                rho=0.45,
                rho_within_size=0.29,
            ),
        },
        "train_wall_s": {"fixed-112": 4134.2, "dynamic@0.4": 3807.0},
        "dial": [
            {
                "mask_budget": 0.4,
                "segm_AP": 40.1,
                "boundary_AP": 26.7,
                "mask_gflops_per_instance": 0.2,
                "resolution_histogram": {"14": 3},
            }
        ],
    }
    text = bench.markdown(result)
    lines = text.splitlines()
    assert (
        "| dynamic@0.4 | cost | 123,456 | 0.100 (25 %) | 42.3 | 60.0 | 40.0 | — | 41.0 | 55.0 | 32.3 | 1/2/3/4 | 0.45 | 0.29 | 3807 |"
        in lines
    )
    assert (
        "| size | — | 123,456 | 0.200 (50 %) | 40.0 | 60.0 | 40.0 | — | 41.0 | 55.0 | 30.0 | 0/5/0/5 | 0.10 | — | (fixed-112) |"
        in lines
    )
    assert "| 0.4 | 0.200 (50 %) | 40.1 | 26.7 | 3/0/0/0 |" in lines


@pytest.mark.parametrize(
    "head, switch, widths",
    [
        ("maskrcnn", None, [64, 64, 64, 64]),
        ("sparse-fixed-112", None, [64, 43, 32, 21]),
        ("dynamic@0.4", "cost", [64, 43, 32, 21]),
        ("paper@0.4", "paper", [64, 43, 32, 21]),
    ],
)
def test_model_facts_of_the_shipped_heads(head, switch, widths):
    """The table's switch / widths / params columns come from the head files themselves: a Mask R-CNN
    head has no switch even though its config carries the default ``policy: dynamic``."""
    weights = ROOT / "benchmarks" / "results" / "accuracy_vs_cost_256_heads" / f"{head}.pt"  # tracked files
    facts = load_benchmark("accuracy_vs_cost_256").model_facts(weights)
    assert facts["switch"] == switch and list(facts["widths"]) == widths
    stored = torch.load(weights, map_location="cpu", weights_only=True)["model"]
    tensors = sum(v.numel() for k, v in stored.items() if ".mask_branch." in k)  # parameters and buffers
    assert 0 < facts["params"] <= tensors and facts["params"] >= 0.99 * tensors


def test_score_floor_stops_low_scoring_detections_at_14():
    """model.mask_score_floor (what benchmarks/score_gate.py sets): below the floor every detection
    gets 14×14, above it the policy's own choice and the very same mask; the detections themselves
    do not change."""
    from dynamask.config import load_config
    from dynamask.models import build_model

    cfg = load_config(
        None,
        {
            "model.backbone": "resnet18",
            "model.policy": "fixed-112",
            "input.min_size": 64,
            "input.max_size": 64,
            "model.box_score_thresh": 0.0,
            "model.box_detections_per_img": 20,
        },
    )
    torch.manual_seed(0)
    model = build_model(cfg, 3).eval()
    image = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        plain = model([image])[0]
    assert plain["scores"].numel() >= 4 and bool((plain["mask_resolution"] == 112).all())
    floor = float(plain["scores"].median())
    model.mask_score_floor = floor
    with torch.no_grad():
        gated = model([image])[0]
    assert torch.equal(gated["boxes"], plain["boxes"]) and torch.equal(gated["scores"], plain["scores"])
    low = plain["scores"] < floor
    assert bool(low.any()) and bool((~low).any())
    assert bool((gated["mask_resolution"][low] == 14).all())
    assert bool((gated["mask_resolution"][~low] == 112).all())
    torch.testing.assert_close(gated["masks"][~low], plain["masks"][~low])
    assert float(gated["mask_flops"][low].max()) < float(plain["mask_flops"][low].min())


def test_coco_scale_file_is_valid_coco(tmp_path):
    """benchmarks/coco_scale.py's synthetic file: COCO's 80 category ids, polygons and crowd RLEs that
    pycocotools decodes, image files of the size the json says (hard links to one PNG)."""
    bench = load_benchmark("coco_scale")
    from pycocotools import mask as mask_utils

    from dynamask.data import CocoInstanceDataset

    ann_file = bench.make_dataset(tmp_path, fraction=0.0005, seed=1)
    data = json.loads(ann_file.read_text())
    assert len(data["images"]) == round(bench.TRAIN2017_IMAGES * 0.0005)
    assert len(data["annotations"]) == round(bench.TRAIN2017_ANNOTATIONS * 0.0005)
    assert [c["id"] for c in data["categories"]] == bench.COCO_IDS and len(bench.COCO_IDS) == 80
    crowd = [a for a in data["annotations"] if a["iscrowd"]]
    for a in crowd:
        rle = mask_utils.frPyObjects(a["segmentation"], bench.HEIGHT, bench.WIDTH)
        assert int(mask_utils.area(rle)) == int(a["bbox"][2] * a["bbox"][3])
    ds = CocoInstanceDataset(str(ann_file), str(tmp_path / "images"))
    image, target = ds[0]
    assert (
        tuple(image.shape[-2:]) == (bench.HEIGHT, bench.WIDTH) and target["masks"].shape[0] == target["boxes"].shape[0]
    )
    assert os.stat(tmp_path / "images" / data["images"][0]["file_name"]).st_nlink > 1


def test_coco_scale_measures_worker_cache_and_results(tmp_path):
    """The other measurements of benchmarks/coco_scale.py on a tiny file: a worker's USS over a full
    pass, the records cache (a hit after the first start), and a val2017-like result set scored by
    `dynamask evaluate --results` (APs strictly between 0 and 100)."""
    bench = load_benchmark("coco_scale")
    ann_file = bench.make_dataset(tmp_path / "train", fraction=0.0002, seed=2)
    images = tmp_path / "train" / "images"
    w = bench.measure_worker(ann_file, images, items=10**9)
    assert w["items"] == round(bench.TRAIN2017_IMAGES * 0.0002) and w["instances"] > 0
    assert w["uss_after_mib"] >= w["uss_after_first_mib"] > 0 and w["uss_before_mib"] > 0
    first = bench.measure("dynamask-cache", ann_file, images, cache=tmp_path / "cache")
    again = bench.measure("dynamask-cache", ann_file, images, cache=tmp_path / "cache")
    assert len(list((tmp_path / "cache").glob("records-*"))) == 1 and first["seconds"] > 0 and again["seconds"] > 0
    gt, res = bench.make_result_set(tmp_path / "val", fraction=0.0004, seed=1)
    results = json.loads(res.read_text())
    assert len(results) == 2 * bench.DETECTIONS_PER_IMAGE
    m = bench.measure_evaluate_results(gt, res, tmp_path / "val" / "eval")
    assert m["peak_rss_mib"] > 0 and m["metrics"]["num_detections"] == len(results)
    for key in ("segm_AP", "bbox_AP", "boundary_AP"):
        assert 0 < m["metrics"][key] < 100
