"""ONNX / TorchScript export: the file reproduces PyTorch on images it was not traced on, with
different numbers of detections; `dynamask export` and Predictor on an exported file."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dynamask import cli
from dynamask.config import load_config
from dynamask.export import ExportedRunner, export_model, prepare_for_export, read_metadata, verify_export
from dynamask.models import build_model
from dynamask.predictor import Predictor

pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.usefixtures("one_thread")
SIZE = 64
# random init: detection scores sit around 0.34, so this threshold gives different counts per image
SETTINGS = {
    "model.backbone": "resnet18",
    "model.fam": "deform",
    "model.policy": "dynamic",
    "input.min_size": SIZE,
    "input.max_size": SIZE,
    "model.box_score_thresh": 0.345,
    "model.box_detections_per_img": 30,
    "model.rpn_pre_nms_top_n_test": 200,
    "model.rpn_post_nms_top_n_test": 60,
}


def _model(policy="dynamic", refinement="dense"):
    cfg = load_config(
        None, {**SETTINGS, "model.policy": policy, "model.refinement": refinement, "model.refinement_points": 300}
    )
    torch.manual_seed(0)
    model = build_model(cfg, 4)
    with torch.no_grad():  # offsets away from zero: the deformable sampling is really fractional
        for fam in model.mask_branch.aggregators:
            fam.offset.bias.normal_(0, 0.8, generator=torch.Generator().manual_seed(1))
        for stage in model.mask_branch.point_stages:  # corrections far from zero: the points matter
            stage.out.weight.normal_(0, 1.0, generator=torch.Generator().manual_seed(2))
    return model.eval(), cfg


def _images(n, seed=5):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(3, SIZE, SIZE, generator=g) for _ in range(n)]


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_exported_file_reproduces_pytorch(fmt, tmp_path):
    model, _ = _model()
    prepare_for_export(model)
    path = str(tmp_path / ("m.onnx" if fmt == "onnx" else "m.pt"))
    export_model(model, fmt, path, ["a", "b", "c"], [1, 2, 3], example=_images(1, seed=99)[0])
    runner = ExportedRunner(path)
    assert read_metadata(path)["class_names"] == ["a", "b", "c"] and runner.metadata["policy"] == "dynamic"
    images = _images(5)
    report = verify_export(model, runner, images)
    assert report["ok"], report
    assert len(report["detection_counts"]) >= 2, report["detection_counts"]
    for image in images:
        with torch.no_grad():
            ref = model([image])[0]
        got = runner(image)
        assert set(got) == {"boxes", "labels", "scores", "masks", "mask_resolution", "mask_flops"}
        torch.testing.assert_close(got["boxes"], ref["boxes"], atol=1e-3, rtol=0)
        torch.testing.assert_close(got["masks"], ref["masks"], atol=1e-4, rtol=0)
        assert torch.equal(got["mask_resolution"], ref["mask_resolution"])
        torch.testing.assert_close(got["mask_flops"], ref["mask_flops"].float())
    assert {14, 28, 56, 112} & set(torch.cat([runner(im)["mask_resolution"] for im in images]).tolist())


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_point_refinement_exports_with_the_same_masks(fmt, tmp_path):
    """Point stages (top-N selection, grid_sample reads, scatter) in the file: per-instance mask
    IoU ≥ 0.99 against PyTorch on images it was not traced on, of other sizes too (FPN maps of
    another size: a map size recorded as a constant misplaced every point)."""
    model, _ = _model("dynamic", refinement="points")
    prepare_for_export(model)
    path = str(tmp_path / ("p.onnx" if fmt == "onnx" else "p.pt"))
    export_model(model, fmt, path, ["a", "b", "c"], [1, 2, 3], example=_images(1, seed=99)[0])
    runner = ExportedRunner(path)
    resolutions = set()
    g = torch.Generator().manual_seed(7)
    other_sizes = [
        torch.rand(3, SIZE, SIZE // 2, generator=g),
        torch.rand(3, SIZE // 2, SIZE, generator=g),
    ]  # padded apart
    for image in _images(4) + other_sizes:
        with torch.no_grad():
            ref = model([image])[0]
        got = runner(image)
        assert torch.equal(got["mask_resolution"], ref["mask_resolution"])
        torch.testing.assert_close(got["mask_flops"], ref["mask_flops"].float())
        a, b = got["masks"][:, 0] >= 0.5, ref["masks"][:, 0] >= 0.5
        inter = (a & b).flatten(1).sum(1).float()
        union = (a | b).flatten(1).sum(1).float()
        iou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
        assert bool((iou >= 0.99).all()), iou
        if len(ref["masks"]):  # and the probabilities themselves (a misplaced point barely moves the IoU here)
            assert float((got["masks"] - ref["masks"]).abs().max()) < 1e-3
        resolutions |= set(ref["mask_resolution"].tolist())
    assert resolutions & {56, 112}, resolutions  # the point stages ran


def test_export_command_and_predictor_on_the_file(tmp_path, capsys):
    model, cfg = _model()
    ckpt = tmp_path / "model.pt"
    torch.save(
        {
            "model": model.state_dict(),
            "config": cfg,
            "class_names": ["a", "b", "c"],
            "cat_ids": [1, 2, 3],
            "num_classes": 4,
            "iteration": 0,
        },
        ckpt,
    )
    out = tmp_path / "size.onnx"
    rc = cli.main(
        [
            "export",
            "--weights",
            str(ckpt),
            "--format",
            "onnx",
            "--policy",
            "size",
            "--out",
            str(out),
            "--verify-images",
            "3",
        ]
    )
    text = capsys.readouterr().out
    assert rc == 0 and out.is_file(), text
    assert "policy size" in text and "-> OK" in text
    exported = Predictor(str(out), score_thresh=0.0)
    native = Predictor(str(ckpt), score_thresh=0.0, policy="size", device="cpu")
    assert exported.class_names == native.class_names == ["a", "b", "c"] and exported.policy == "size"
    image = _images(1, seed=7)[0]
    a, b = exported.predict(image), native.predict(image)
    assert set(a) == set(b)
    torch.testing.assert_close(a["boxes"], b["boxes"], atol=1e-3, rtol=0)
    torch.testing.assert_close(a["masks"], b["masks"], atol=1e-4, rtol=0)
    with pytest.raises(Exception, match="holds its own policy"):
        exported.policy = "fixed-28"


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--budget", "0.5"], "budget dial (--budget 0.5) cannot be exported"),
        (["--format", "tflite"], "invalid choice"),
    ],
)
def test_export_refusals(tmp_path, capsys, args, needle):
    model, cfg = _model("fixed-28")
    ckpt = tmp_path / "model.pt"
    torch.save({"model": model.state_dict(), "config": cfg, "class_names": ["a", "b", "c"], "num_classes": 4}, ckpt)
    argv = ["export", "--weights", str(ckpt), "--format", "onnx", "--out", str(tmp_path / "x.onnx")]
    if args[0] == "--format":
        argv[4] = args[1]
    else:
        argv += args
    try:
        rc = cli.main(argv)
    except SystemExit as e:  # argparse
        rc = e.code
    err = capsys.readouterr().err
    assert rc == 2 and needle in err, err
    assert not (tmp_path / "x.onnx").exists()


def test_export_verifies_on_validation_images(tmp_path, capsys):
    # a trained model: a random one's masks sit at 0.5, where binarised IoU says nothing
    from pathlib import Path

    from dynamask.data import generate_shapes_dataset

    shipped = Path(__file__).resolve().parents[1] / "checkpoints" / "shapes_detail_dynamask_c64.pt"
    shapes = generate_shapes_dataset(tmp_path / "shapes", 1, 3, image_size=(192, 288), detail=True)
    rc = cli.main(
        [
            "export",
            "--weights",
            str(shipped),
            "--format",
            "torchscript",
            "--policy",
            "size",
            "--out",
            str(tmp_path / "m.pt"),
            f"data.val_json={shapes['val_json']}",
            f"data.val_images={shapes['val_dir']}",
        ]
    )
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "verified on 3 validation image(s)" in text and "-> OK" in text


def test_multilevel_roi_pool_export_keeps_the_roi_count_per_level_dynamic(tmp_path):
    """Traced with one RoI on a level, run with none or several there: recording ``out[idx] = ...``
    baked the traced count into a Reshape and ONNX Runtime failed on other images."""
    onnxruntime = pytest.importorskip("onnxruntime")
    from dynamask.export import ONNX_OPSET
    from dynamask.models import MaskRoIPool

    pool = MaskRoIPool(["0", "1", "2", "3"], 14, 2, geometry="exact")

    class Wrapper(torch.nn.Module):
        def forward(self, f0, f1, f2, f3, boxes):
            return pool({"0": f0, "1": f1, "2": f2, "3": f3}, [boxes], [(256, 256)])

    torch.manual_seed(0)
    feats = [torch.rand(1, 8, 256 // s, 256 // s) for s in (4, 8, 16, 32)]
    one_per_level = torch.tensor([[0, 0, 20, 20], [0, 0, 90, 90], [0, 0, 180, 180], [0, 0, 250, 250.0]])
    path = str(tmp_path / "pool.onnx")
    names = ["f0", "f1", "f2", "f3", "boxes"]
    torch.onnx.export(
        Wrapper(),
        (*feats, one_per_level),
        path,
        input_names=names,
        output_names=["out"],
        dynamic_axes={"boxes": {0: "n"}, "out": {0: "n"}},
        opset_version=ONNX_OPSET,
        dynamo=False,
    )
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    for boxes in (
        torch.tensor([[0, 0, 20, 20], [5, 5, 30, 30], [0, 0, 250, 250.0]]),  # levels 0, 0, 3
        torch.tensor([[0, 0, 250, 250.0]]),
    ):
        got = session.run(None, {**{n: f.numpy() for n, f in zip(names, feats)}, "boxes": boxes.numpy()})[0]
        want = Wrapper()(*feats, boxes)
        np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=1e-5)
