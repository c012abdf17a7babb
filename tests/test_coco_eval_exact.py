"""dynamask.evaluation against the references: pycocotools' COCOeval (bbox, segm) and
faster-coco-eval's ``iouType="boundary"``, on the whole ``precision`` array to 1e-4.

The sets: the shapes validation set with a model's detections (tests/test_sharded_eval.py's
fixtures are too slow to share: here the gt itself, jittered), a small val2017-like set from
benchmarks/coco_scale.py's generator, and a hostile set with every case pycocotools treats
specially: crowd ground truth, images without ground truth or without detections, more
detections than ``maxDets``, every area range, score ties, empty masks, masks touching the
border, images of different sizes, a json ``area`` unlike the mask's, a category absent from the
results.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import warnings
from pathlib import Path

import numpy as np
import pytest
from benchmark_module import load_benchmark
from pycocotools import mask as mask_utils

from dynamask.errors import DynaMaskError
from dynamask.evaluation import results_file
from dynamask.evaluation.coco_eval import coco_precisions, compute_coco_metrics, max_dets_list
from dynamask.evaluation.results import results_from_entries
from dynamask.evaluation.rle import decode_crop, rle_totals

ROOT = Path(__file__).resolve().parents[1]
TOL = 1e-4


# ---------------------------------------------------------------- the references
def _pycocotools_precision(gt: dict, results: list, iou_type: str, max_dets: int) -> np.ndarray:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    drop = "segmentation" if iou_type == "bbox" else "bbox"
    entries = [{k: v for k, v in r.items() if k != drop} for r in copy.deepcopy(results)]
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = copy.deepcopy(gt)
        coco.createIndex()
        E = COCOeval(coco, coco.loadRes(entries), iou_type)
        E.params.imgIds = sorted(img["id"] for img in gt["images"])
        E.params.maxDets = max_dets_list(max_dets)
        E.evaluate()
        E.accumulate()
    return np.asarray(E.eval["precision"])


def _faster_coco_eval_boundary(gt: dict, results: list, max_dets: int) -> np.ndarray:
    from faster_coco_eval import COCO, COCOeval_faster

    quiet = logging.getLogger("faster_coco_eval").debug
    coco = COCO(copy.deepcopy(gt), print_function=quiet)
    dt = coco.loadRes([{k: v for k, v in r.items() if k != "bbox"} for r in copy.deepcopy(results)])
    E = COCOeval_faster(
        coco, dt, iouType="boundary", print_function=quiet, boundary_dilation_ratio=0.02, boundary_cpu_count=1
    )
    E.params.imgIds = sorted(img["id"] for img in gt["images"])
    E.params.maxDets = max_dets_list(max_dets)
    E.evaluate()
    E.accumulate()
    return np.asarray(E.eval["precision"])


def _assert_exact(gt: dict, results: list, max_dets: int = 100, **kw) -> dict:
    ours = coco_precisions(gt, results, max_dets=max_dets, **kw)
    assert set(ours) == {"bbox", "segm", "boundary"}
    for kind in ("bbox", "segm"):
        ref = _pycocotools_precision(gt, results, kind, max_dets)
        assert ours[kind].shape == ref.shape, kind
        np.testing.assert_allclose(ours[kind], ref, atol=TOL, rtol=0, err_msg=kind)
    ref = _faster_coco_eval_boundary(gt, results, max_dets)
    np.testing.assert_allclose(ours["boundary"], ref, atol=TOL, rtol=0, err_msg="boundary")
    return ours


# ---------------------------------------------------------------- the sets
def _rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def _det(image_id: int, category: int, score: float, mask: np.ndarray) -> dict:
    seg = _rle(mask)
    box = [float(v) for v in mask_utils.toBbox({"size": seg["size"], "counts": seg["counts"].encode()})]
    return {"image_id": image_id, "category_id": category, "score": score, "bbox": box, "segmentation": seg}


def _blob(rng, h: int, w: int, touch_border: bool = False) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    y0, x0 = (0, 0) if touch_border else (int(rng.integers(0, h - 4)), int(rng.integers(0, w - 4)))
    y1, x1 = min(h, y0 + int(rng.integers(3, h))), min(w, x0 + int(rng.integers(3, w)))
    m[y0:y1, x0:x1] = 1
    m &= (rng.random((h, w)) < 0.93).astype(np.uint8)  # ragged outlines
    return m


def _hostile_set(seed: int = 0):
    """Ground truth and detections with every special case of the protocol."""
    rng = np.random.default_rng(seed)
    sizes = [(48, 64), (64, 64), (30, 80), (120, 160), (40, 40), (64, 48)]
    images = [{"id": i + 1, "width": w, "height": h, "file_name": f"{i}.png"} for i, (h, w) in enumerate(sizes)]
    categories = [{"id": c, "name": f"c{c}"} for c in (1, 2, 5, 9)]  # 9: never detected
    anns, dets = [], []
    for img in images:
        i, h, w = img["id"], img["height"], img["width"]
        if i == 5:  # an image without ground truth (detections only: false positives)
            dets += [_det(i, 1, 0.9, _blob(rng, h, w)), _det(i, 2, 0.4, _blob(rng, h, w))]
            continue
        for k in range(int(rng.integers(2, 6))):
            m = _blob(rng, h, w, touch_border=(k == 0))
            cat = [1, 2, 5, 9][k % 4]
            area = float(m.sum()) * (3.0 if k == 1 else 1.0)  # a json area unlike the mask's
            seg = _rle(m)
            if k == 2:  # uncompressed RLE, as COCO stores crowds
                seg = {"size": [h, w], "counts": _uncompressed(m)}
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i,
                    "category_id": cat,
                    "segmentation": seg,
                    "area": area,
                    "bbox": [float(v) for v in mask_utils.toBbox(mask_utils.encode(np.asfortranarray(m)))],
                    "iscrowd": int(k == 3 and i % 2 == 0),
                }
            )
            if i == 6:  # an image without detections: every object missed
                continue
            for _j in range(3):  # near-copies, some with the same score
                moved = np.roll(m, (int(rng.integers(-2, 3)), int(rng.integers(-2, 3))), axis=(0, 1))
                dets.append(_det(i, cat if cat != 9 else 5, round(float(rng.uniform(0.3, 1.0)), 1), moved))
        if i != 6:
            for _ in range(12):  # more than maxDets=10 in a category; ties and empty masks among them
                empty = rng.random() < 0.15
                m = np.zeros((h, w), np.uint8) if empty else _blob(rng, h, w)
                dets.append(_det(i, 1, round(float(rng.uniform(0, 1)), 1), m))
    # a polygon ground truth (rasterised the pycocotools way)
    anns.append(
        {
            "id": len(anns) + 1,
            "image_id": 4,
            "category_id": 2,
            "iscrowd": 0,
            "area": 900.0,
            "segmentation": [[10, 10, 60, 12, 55, 50, 12, 45]],
            "bbox": [10, 10, 50, 40],
        }
    )
    gt = {"images": images, "annotations": anns, "categories": categories}
    return gt, dets


def _uncompressed(m: np.ndarray) -> list:
    flat = m.reshape(-1, order="F")
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate(([0], change, [flat.size]))
    counts = np.diff(bounds).tolist()
    return ([0] + counts) if flat[0] else counts


@pytest.fixture(scope="module")
def val_like(tmp_path_factory):
    bench = load_benchmark("coco_scale")
    gt_file, res_file = bench.make_result_set(tmp_path_factory.mktemp("val_like"), fraction=0.003, seed=4)
    return json.loads(gt_file.read_text()), json.loads(res_file.read_text())


# ---------------------------------------------------------------- exactness
@pytest.mark.parametrize("max_dets", [100, 3])
def test_hostile_cases_equal_the_references(max_dets):
    gt, dets = _hostile_set()
    assert any(a["iscrowd"] for a in gt["annotations"]) and len({d["score"] for d in dets}) < len(dets)
    ours = _assert_exact(gt, dets, max_dets=max_dets)
    p = ours["segm"]
    assert (p[:, :, 3] <= 0).all() and (p > 0).any()  # category 9 is absent from the results


def test_val2017_like_set_equals_the_references(val_like):
    gt, results = val_like
    ours = _assert_exact(gt, results)
    for kind, p in ours.items():
        assert 0 < p[p > -1].mean() < 1, kind


def test_worker_processes_give_the_same_numbers(val_like):
    gt, results = val_like
    one = compute_coco_metrics(gt, results, cpu_count=1)
    two = compute_coco_metrics(gt, results, cpu_count=2)
    assert one == two and all(v is not None for k, v in one.items() if k.endswith("_AP"))


def test_shapes_validation_set_equals_the_references(tmp_path):
    from dynamask.data import generate_shapes_dataset

    shapes = generate_shapes_dataset(tmp_path, 1, 6, image_size=64)
    gt = json.loads(Path(shapes["val_json"]).read_text())
    rng = np.random.default_rng(1)
    results = []
    for ann in gt["annotations"]:
        seg = ann["segmentation"]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            m = mask_utils.decode({"size": seg["size"], "counts": seg["counts"].encode()})
        for shift in (0, 1, 3):
            results.append(
                _det(ann["image_id"], ann["category_id"], round(float(rng.uniform()), 2), np.roll(m, shift, axis=1))
            )
    _assert_exact(gt, results)


# ---------------------------------------------------------------- pieces
def test_crop_decoding_and_totals_match_pycocotools():
    rng = np.random.default_rng(2)
    for _ in range(20):
        h, w = int(rng.integers(5, 40)), int(rng.integers(5, 40))
        m = _blob(rng, h, w, touch_border=bool(rng.integers(2)))
        seg = _rle(m)
        x, y, bw, bh = (int(v) for v in mask_utils.toBbox({"size": [h, w], "counts": seg["counts"].encode()}))
        np.testing.assert_array_equal(decode_crop(seg["counts"].encode(), h, (x, y, bw, bh)), m[y : y + bh, x : x + bw])
        assert rle_totals([seg["counts"]]).tolist() == [h * w]
    assert rle_totals(["", "abc", "0?"]).tolist() == [0, -1, 15]


def test_results_file_read_in_small_pieces_is_the_same(tmp_path, monkeypatch):
    gt, dets = _hostile_set()
    path = tmp_path / "r.json"
    path.write_text(json.dumps(dets, indent=1))
    whole = results_from_entries(dets)
    monkeypatch.setattr(results_file, "PIECE_BYTES", 97)
    monkeypatch.setattr(results_file, "MARGIN_CHARS", 13)  # entries longer than the margin: read on
    pieces = results_file.read_results_file(path, gt)
    for field in whole.__dataclass_fields__:
        np.testing.assert_array_equal(getattr(pieces, field), getattr(whole, field), err_msg=field)
    utf16 = tmp_path / "utf16.json"  # not UTF-8: read whole, the same entries
    utf16.write_bytes(json.dumps(dets).encode("utf-16"))
    assert len(results_file.read_results_file(utf16, gt)) == len(dets)
    for text, needle in (
        ('[{"image_id": 1}] x', "invalid JSON at line 1"),
        ('[{"image_id": 1}, {"image_id": ', "invalid JSON at line 1"),  # a bad entry, then bad JSON
        ('{"annotations": []}', "got a JSON object"),
    ):
        path.write_text(text)
        with pytest.raises(DynaMaskError, match=needle):
            results_file.read_results_file(path, gt)


def test_scoring_a_results_file_does_not_import_torch(tmp_path):
    """``dynamask evaluate --results`` reads, checks and scores without torch (about half a GiB less)."""
    import subprocess
    import sys

    gt, dets = _hostile_set()
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "r.json").write_text(json.dumps(dets))
    code = (
        "import sys; from dynamask.cli import main; "
        f"rc = main(['evaluate', '--results', {str(tmp_path / 'r.json')!r}, '--gt', {str(tmp_path / 'gt.json')!r}, "
        "'--no-progress']); print('torch' in sys.modules, rc)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**__import__("os").environ, "PYTHONPATH": str(ROOT / "src")},
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "False 0" and "boundary" in proc.stdout
