"""Evaluation and prediction on every rank (issue 26, part 3) and ``evaluate --results``.

* ``torchrun --nproc_per_node=2 -m dynamask evaluate`` (Gloo, CPU) on the shipped detailed-shapes
  model: the same ``coco_results.json`` byte for byte and the same metrics as one process.
* ``torchrun --nproc_per_node=2 -m dynamask predict`` on a folder with colliding names and an
  unreadable file: the same overlays (names and bytes) and ``predictions.json`` as one process.
* ``dynamask evaluate --results FILE.json`` scores a results file without a model (the metrics of
  the run that wrote it) and names the file, entry and field of bad input.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from torchrun_launch import TORCHRUN, torchrun_env

from dynamask import cli
from dynamask.data import generate_shapes_dataset
from dynamask.engine import distributed as du
from dynamask.engine.evaluate import AP_KEYS, METRIC_KEYS
from dynamask.engine.predict import predict_files, shard_files

pytestmark = [
    pytest.mark.usefixtures("restore_logging"),
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]

ROOT = Path(__file__).resolve().parents[1]
HEAD = ROOT / "checkpoints" / "shapes_detail_dynamask_c64.pt"  # the demo's head on its detector
#: 5 images in batches of 2: rank 0 runs batches 0 and 2 (3 images), rank 1 batch 1 (2 images)
VAL_IMAGES = 5


@pytest.fixture(scope="module")
def detail(tmp_path_factory):
    """The first validation images of the demo's detailed shapes (256 px)."""
    return generate_shapes_dataset(
        tmp_path_factory.mktemp("sharded_detail"), 0, VAL_IMAGES, image_size=256, seed=0, detail=True
    )


def overrides(detail):
    return [f"data.val_json={detail['val_json']}", f"data.val_images={detail['val_dir']}"]


def torchrun(*args, nproc=2, timeout=240):
    env = torchrun_env()
    cmd = [
        *TORCHRUN,
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "dynamask",
        *args,
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-2000:]}\nstderr:\n{proc.stderr[-4000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr[-4000:]
    return proc


@pytest.fixture(scope="module")
def one_process(detail, tmp_path_factory):
    """``dynamask evaluate`` in this process (one thread, as each torchrun worker): (metrics, out folder)."""
    out = tmp_path_factory.mktemp("eval_one")
    log = logging.getLogger("dynamask")
    saved = (list(log.handlers), log.level, log.propagate)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert (
            cli.main(
                [
                    "evaluate",
                    "--weights",
                    str(HEAD),
                    "--out",
                    str(out),
                    "--device",
                    "cpu",
                    "--no-progress",
                    *overrides(detail),
                ]
            )
            == 0
        )
    finally:
        torch.set_num_threads(n)
        log.handlers[:], log.level, log.propagate = saved
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_detections"] > 0 and metrics["segm_AP"] > 10  # a real model: detections that score
    return metrics, out


def test_shard_positions_deal_whole_batches():
    assert du.shard_positions(5, 0, 2, 2) == [0, 1, 4] and du.shard_positions(5, 1, 2, 2) == [2, 3]
    assert du.shard_positions(1, 1, 2, 2) == []  # more processes than batches: an empty share
    for n, world, block in ((7, 3, 2), (10, 4, 1), (3, 2, 5)):
        shares = [du.shard_positions(n, r, world, block) for r in range(world)]
        assert sorted(p for s in shares for p in s) == list(range(n))


def test_sharded_evaluate_matches_one_process(detail, one_process, tmp_path):
    metrics, one = one_process
    two = tmp_path / "two"
    proc = torchrun(
        "evaluate", "--weights", str(HEAD), "--out", str(two), "--device", "cpu", "--no-progress", *overrides(detail)
    )
    assert f"evaluated {VAL_IMAGES} image(s) on 2 processes (3/2 image(s) each)" in proc.stderr
    assert proc.stdout.count("metrics written to") == 1  # rank 0 prints, once
    assert (two / "coco_results.json").read_bytes() == (one / "coco_results.json").read_bytes()
    sharded = json.loads((two / "metrics.json").read_text())
    single = json.loads((one / "metrics.json").read_text())
    assert sharded.pop("eval_processes") == 2
    assert sharded.pop("images_per_second") > 0 and single.pop("images_per_second") > 0
    assert sharded == single  # every AP to the last digit, the histogram, the costs, the complexity rho
    assert sorted(os.listdir(two)) == ["coco_results.json", "metrics.json"]


def test_sharded_predict_matches_one_process(detail, tmp_path):
    images = sorted(Path(detail["val_dir"]).glob("*.png"))
    inputs = tmp_path / "in"
    (inputs / "a").mkdir(parents=True)
    (inputs / "b").mkdir()
    layout = {"a/x.png": 0, "b/x.png": 1, "x-2.png": 2, "w.png": 3, "y.png": 4, "z.png": 0}
    for name, k in layout.items():
        shutil.copy(images[k], inputs / name)
    (inputs / "bad.png").write_bytes(b"not a png")
    files = sorted(inputs.rglob("*.png"))
    # x, x and x-2 compete for names: one process takes them all, in order
    assert [files[p].name for p in shard_files(files, 1, 2)] == ["bad.png", "y.png"]

    one = tmp_path / "one"
    predict_files(str(HEAD), str(inputs), one, device="cpu", progress=False)
    two = tmp_path / "two"
    proc = torchrun("predict", "--weights", str(HEAD), str(inputs), "--out", str(two), "--device", "cpu")
    assert "on 2 processes (5/2 image(s) each)" in proc.stderr and "skipped 1 unreadable image(s)" in proc.stderr
    assert proc.stdout.count("predictions written to") == 1
    names = sorted(os.listdir(one))
    assert (
        names
        == sorted(os.listdir(two))
        == sorted(
            [
                "predictions.json",
                "x_overlay.png",
                "x-2_overlay.png",
                "x-2-2_overlay.png",
                "w_overlay.png",
                "y_overlay.png",
                "z_overlay.png",
            ]
        )
    )
    for name in names:
        assert (two / name).read_bytes() == (one / name).read_bytes(), name
    entries = json.loads((two / "predictions.json").read_text())
    assert entries and [e["image_id"] for e in entries] == sorted(e["image_id"] for e in entries)


# ---------------------------------------------------------------- evaluate --results


def run(argv, capsys):
    rc = cli.main(argv)
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def test_results_file_scores_as_the_run_that_wrote_it(detail, one_process, tmp_path, capsys):
    metrics, one = one_process
    out = tmp_path / "scored"
    rc, stdout, err = run(
        [
            "evaluate",
            "--results",
            str(one / "coco_results.json"),
            "--gt",
            detail["val_json"],
            "--out",
            str(out),
            f"test.max_dets={metrics['max_dets']}",
        ],
        capsys,
    )
    assert rc == 0, err
    saved = json.loads((out / "metrics.json").read_text())
    assert set(METRIC_KEYS) <= set(saved) and saved["results_file"] == str(one / "coco_results.json")
    same = (
        *AP_KEYS,
        "mask_gflops_per_instance",
        "mask_gflops_per_image",
        "num_images",
        "num_detections",
        "complexity_spearman",
        "complexity_spearman_within_size",
        "complexity_pairs",
        "max_dets",
    )
    single = json.loads((one / "metrics.json").read_text())
    assert {k: saved[k] for k in same} == {k: single[k] for k in same}
    assert saved["resolution_histogram"] == single["resolution_histogram"]
    assert saved["policy"] is None and saved["images_per_second"] is None
    assert "segm" in stdout and "boundary" in stdout and str(one / "coco_results.json") in stdout
    assert "images / s" not in stdout  # no model ran

    # the ground truth from the config (data.val_json) instead of --gt; no --out: nothing written
    rc, stdout2, err = run(
        ["evaluate", "--results", str(one / "coco_results.json"), f"data.val_json={detail['val_json']}"], capsys
    )
    assert rc == 0, err
    assert stdout2.splitlines()[:5] == stdout.splitlines()[:5]


def _bad_results(detail, one_process):
    good = json.loads((one_process[1] / "coco_results.json").read_text())
    gt = json.loads(Path(detail["val_json"]).read_text())
    first = good[0]

    def entry(**changes):
        e = {**first, **changes}
        return [e] + good[1:]

    without = lambda key: [{k: v for k, v in first.items() if k != key}] + good[1:]  # noqa: E731
    h, w = first["segmentation"]["size"]
    return {
        "not_json": ("{[", "invalid JSON at line 1"),
        "gt_file": (
            gt,
            "a COCO results file is a JSON list of detections, got a JSON object (this one has "
            "'annotations': a ground-truth file?",
        ),
        "number": (3, "a JSON list of detections, got a JSON int"),
        "not_object": ([first, "x"], "entry 1 must be an object, got str"),
        "no_score": (without("score"), "entry 0: missing field 'score'"),
        "no_image_id": (without("image_id"), "entry 0: missing field 'image_id'"),
        "no_category_id": (without("category_id"), "entry 0: missing field 'category_id'"),
        "str_image_id": (entry(image_id="1"), "entry 0: field 'image_id' must be an integer, got '1'"),
        "nan_score": (entry(score=float("nan")), "entry 0: field 'score' must be a finite number"),
        "no_box_no_mask": (
            [{k: v for k, v in first.items() if k not in ("bbox", "segmentation")}],
            "entry 0: needs a field 'bbox' or 'segmentation'",
        ),
        "bad_bbox": (entry(bbox=[1, 2, 3]), "entry 0: field 'bbox' must be [x, y, width, height]"),
        "unknown_image": (entry(image_id=999), "entry 0: field 'image_id' 999 is not an image of"),
        "unknown_category": (entry(category_id=999), "entry 0: field 'category_id' 999 is not a category of"),
        "polygon": (entry(segmentation=[[1, 1, 5, 1, 5, 5]]), "entry 0: field 'segmentation' is a polygon list"),
        "wrong_size": (
            entry(segmentation={**first["segmentation"], "size": [h + 1, w]}),
            f"entry 0: field 'segmentation.size' [{h + 1}, {w}] is not the size of image",
        ),
        "corrupt_counts": (
            entry(segmentation={**first["segmentation"], "counts": "abc"}),
            "entry 0: field 'segmentation.counts' is not a compressed RLE",
        ),
        "short_counts": (entry(segmentation={"size": [h, w], "counts": "0?"}), "has runs over 15 pixels"),
        "bad_resolution": (entry(mask_resolution="28"), "entry 0: field 'mask_resolution' must be an integer"),
    }


def test_bad_results_files_are_one_line_errors(detail, one_process, tmp_path, capsys):
    for name, (content, needle) in _bad_results(detail, one_process).items():
        path = tmp_path / f"{name}.json"
        path.write_text(content if isinstance(content, str) else json.dumps(content))
        rc, _, err = run(
            ["evaluate", "--results", str(path), "--gt", detail["val_json"], "--out", str(tmp_path / "out")], capsys
        )
        assert rc == 2, (name, err)
        assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, (name, err)
        assert str(path) in err and needle in err, (name, needle, err)
    assert not (tmp_path / "out").exists()
    results = str(one_process[1] / "coco_results.json")
    for argv, needle in (
        (["--results", str(tmp_path / "missing.json"), "--gt", detail["val_json"]], "results file not found"),
        (["--results", results], "give the ground truth with --gt"),
        (["--results", results, "--gt", str(tmp_path / "no_gt.json")], "no_gt.json"),
        (["--results", results, "--gt", detail["val_json"], "--weights", str(HEAD)], "not both"),
        (["--results", results, "--gt", detail["val_json"], "--policy", "fixed-28"], "--policy only apply"),
        ([], "give --weights CKPT"),
        (["--weights", str(HEAD), "--gt", detail["val_json"]], "--gt goes with --results"),
    ):
        rc, _, err = run(["evaluate", *argv], capsys)
        assert rc == 2 and needle in err, (argv, err)


def test_empty_and_uncompressed_results(detail, one_process, tmp_path):
    from pycocotools import mask as mask_utils

    from dynamask.engine.evaluate import evaluate_results

    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    m = evaluate_results(empty, detail["val_json"])
    assert m["segm_AP"] == m["bbox_AP"] == 0.0 and m["num_detections"] == 0 and m["mask_gflops_per_image"] is None
    good = json.loads((one_process[1] / "coco_results.json").read_text())
    plain = []  # uncompressed RLE counts (a list), as some tools write them: the same numbers
    for r in good:
        seg = r["segmentation"]
        mask = mask_utils.decode({"size": seg["size"], "counts": seg["counts"].encode()})
        flat = mask.reshape(-1, order="F")
        change = [0, *(i for i in range(1, flat.size) if flat[i] != flat[i - 1]), flat.size]
        counts = [change[i + 1] - change[i] for i in range(len(change) - 1)]
        if flat[0]:
            counts = [0, *counts]
        plain.append({**r, "segmentation": {"size": seg["size"], "counts": counts}})
    path = tmp_path / "plain.json"
    path.write_text(json.dumps(plain))
    a, b = (
        evaluate_results(path, detail["val_json"]),
        evaluate_results(one_process[1] / "coco_results.json", detail["val_json"]),
    )
    assert {k: a[k] for k in AP_KEYS} == {k: b[k] for k in AP_KEYS}
