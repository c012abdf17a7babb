"""torchvision detection state dicts as model.detector_weights / model.init_weights / --weights."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from torchvision.models import resnet18
from torchvision.models.detection import MaskRCNN, maskrcnn_resnet50_fpn
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

from dynamask.config import load_config
from dynamask.data import CocoInstanceDataset, generate_shapes_dataset
from dynamask.engine.train import train
from dynamask.errors import DynaMaskError
from dynamask.inference import model_from_checkpoint
from dynamask.models import maskrcnn_resnet18_fpn
from dynamask.models.torchvision_weights import (
    coco_label_space,
    load_torchvision_detection,
    read_torchvision_detection_file,
)

pytestmark = pytest.mark.usefixtures("one_thread")
SIZE = 64


def _tv_r18(num_classes):
    torch.manual_seed(0)
    return MaskRCNN(
        resnet_fpn_backbone(backbone_name="resnet18", weights=None, trainable_layers=5),
        num_classes=num_classes,
        min_size=SIZE,
        max_size=SIZE,
        box_score_thresh=0.0,
    ).eval()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("tv_weights")
    out = {}
    for n in (9, 4):
        out[n] = d / f"tv_r18_{n}.pth"
        torch.save(_tv_r18(n).state_dict(), out[n])
    torch.manual_seed(0)
    torch.save(
        maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91).state_dict(), d / "tv_r50_91.pth"
    )
    out[91] = d / "tv_r50_91.pth"
    old = {}  # the layout of the v1 files torch.hub caches: rpn.head.conv.*, mask_head.mask_fcnN.*
    for k, v in torch.load(out[9], weights_only=True).items():
        k = k.replace("rpn.head.conv.0.0.", "rpn.head.conv.")
        for i in range(4):
            k = k.replace(f"roi_heads.mask_head.{i}.0.", f"roi_heads.mask_head.mask_fcn{i + 1}.")
        old[k] = v
    out["old"] = d / "tv_r18_9_old_keys.pth"
    torch.save(old, out["old"])
    out["classifier"] = d / "resnet18.pth"
    torch.save(resnet18(weights=None).state_dict(), out["classifier"])
    out["truncated"] = d / "truncated.pth"
    out["truncated"].write_bytes(out[9].read_bytes()[:5000])
    return out


@pytest.mark.parametrize("which", [9, "old"])
def test_torchvision_mask_rcnn_runs_identically(files, which):
    tv = _tv_r18(9)
    state = read_torchvision_detection_file(files[which])
    assert "rpn.head.conv.weight" in state if which == "old" else "rpn.head.conv.0.0.weight" in state
    ours = maskrcnn_resnet18_fpn(
        9, min_size=SIZE, max_size=SIZE, box_score_thresh=0.0, mask_geometry="torchvision"
    ).eval()
    done = load_torchvision_detection(ours, state, str(files[which]), with_mask_head=True)
    assert done == {"num_classes": 9, "reinitialised": [], "mask_head_loaded": True}
    images = [torch.rand(3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))]
    with torch.no_grad():
        a, b = tv(images)[0], ours(images)[0]
    assert a["boxes"].shape[0] > 0
    assert torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["labels"], b["labels"])
    torch.testing.assert_close(b["masks"], a["masks"], atol=1e-4, rtol=0)


def test_other_class_count_reinitialises_only_the_predictors(files):
    ours = maskrcnn_resnet18_fpn(6, min_size=SIZE, max_size=SIZE)
    before = {k: v.clone() for k, v in ours.state_dict().items()}
    state = read_torchvision_detection_file(files[9])
    done = load_torchvision_detection(ours, state, str(files[9]), with_mask_head=True)
    assert done["reinitialised"] == ["roi_heads.box_predictor", "roi_heads.mask_branch.mask_predictor.mask_fcn_logits"]
    after = ours.state_dict()
    assert torch.equal(
        after["roi_heads.box_predictor.cls_score.weight"], before["roi_heads.box_predictor.cls_score.weight"]
    )
    assert torch.equal(after["backbone.body.layer1.0.conv1.weight"], state["backbone.body.layer1.0.conv1.weight"])
    assert torch.equal(after["roi_heads.mask_branch.mask_head.0.0.weight"], state["roi_heads.mask_head.0.0.weight"])


def test_91_class_file_keeps_coco_labels(files):
    model, record = model_from_checkpoint(str(files[91]))
    assert record["source"] == "torchvision" and record["mask_head_loaded"]
    assert model.mask_geometry == "torchvision"
    assert record["cat_ids"] == list(range(1, 91)) and len(record["class_names"]) == 90
    assert record["class_names"][0] == "person" and record["class_names"][2] == "car"
    assert dict(coco_label_space())[18] == "dog"
    state = torch.load(files[91], weights_only=True)
    assert torch.equal(
        model.state_dict()["roi_heads.mask_branch.mask_predictor.mask_fcn_logits.weight"],
        state["roi_heads.mask_predictor.mask_fcn_logits.weight"],
    )


@pytest.mark.parametrize(
    "which, needles",
    [
        (
            "classifier",
            [
                "resnet18.pth",
                "nor the state dict of a torchvision detection model",
                "'conv1.weight'",
                "model.weights_backbone",
            ],
        ),
        ("truncated", ["truncated.pth", "truncated or corrupt"]),
    ],
)
def test_wrong_files_are_named(files, which, needles):
    with pytest.raises(DynaMaskError) as e:
        read_torchvision_detection_file(files[which])
    message = str(e.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message


def test_r18_file_for_r50_model_names_the_first_mismatching_key(files):
    with pytest.raises(DynaMaskError) as e:
        model_from_checkpoint(str(files[9]), {"model": {"backbone": "resnet50", "head": "maskrcnn"}})
    message = str(e.value)
    assert "tv_r18_9.pth" in message and "first mismatching key 'backbone.body.layer1.0.conv1.weight'" in message
    assert "(64, 64, 3, 3) in the file, (64, 64, 1, 1) in the model" in message


# ------------------------------------------------------------------ training from a torchvision file
@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return generate_shapes_dataset(tmp_path_factory.mktemp("shapes_tv"), 4, 2, image_size=SIZE)


def _train_cfg(data_json, data_dir, out, **over):
    base = {
        "model.backbone": "resnet18",
        "model.head": "maskrcnn",
        "model.freeze_detector": True,
        "input.min_size": SIZE,
        "input.max_size": SIZE,
        "data.train_json": data_json,
        "data.train_images": data_dir,
        "data.num_workers": 0,
        "solver.max_iter": 3,
        "solver.ims_per_batch": 2,
        "solver.reference_batch": 2,
        "solver.warmup_iters": 1,
        "solver.steps": [],
        "solver.checkpoint_period": 0,
        "test.eval_period": 0,
        "solver.optimizer": "adamw",
        "solver.base_lr": 0.01,
        "output_dir": str(out),
    }
    return load_config(None, {**base, **over})


def test_train_on_a_torchvision_detector_with_new_classes(files, shapes, tmp_path, caplog):
    # shapes has 8 categories; the 4-class file's box predictor cannot serve them
    cfg = _train_cfg(
        shapes["train_json"], shapes["train_dir"], tmp_path / "run", **{"model.init_weights": str(files[4])}
    )
    with caplog.at_level(logging.INFO, logger="dynamask"):
        train(cfg, str(tmp_path / "run"), progress=False)
    log = caplog.text
    assert "loaded backbone, FPN, RPN, box head and mask head from torchvision file" in log
    assert "roi_heads.box_predictor" in log and "the box predictor trains (new classes)" in log
    ckpt = torch.load(tmp_path / "run" / "model_final.pt", weights_only=True)
    state = torch.load(files[4], weights_only=True)
    assert torch.equal(
        ckpt["model"]["backbone.body.layer2.0.conv1.weight"], state["backbone.body.layer2.0.conv1.weight"]
    )
    assert (
        torch.equal(
            ckpt["model"]["roi_heads.mask_branch.mask_head.0.0.weight"].float(), state["roi_heads.mask_head.0.0.weight"]
        )
        is False
    )  # the mask head trained
    assert ckpt["model"]["roi_heads.box_predictor.cls_score.weight"].shape[0] == 9


def test_train_with_coco_categories_keeps_torchvision_labels(files, shapes, tmp_path, caplog):
    data = json.loads(open(shapes["train_json"]).read())
    names = dict(coco_label_space())
    remap = {c["id"]: coco_id for c, coco_id in zip(data["categories"], (1, 3, 18, 44, 62, 72, 85, 90))}
    data["categories"] = [{"id": remap[c["id"]], "name": names[remap[c["id"]]]} for c in data["categories"]]
    for a in data["annotations"]:
        a["category_id"] = remap[a["category_id"]]
    path = tmp_path / "coco_cats.json"
    path.write_text(json.dumps(data))
    ds = CocoInstanceDataset(str(path), shapes["train_dir"])
    cfg = _train_cfg(
        str(path),
        shapes["train_dir"],
        tmp_path / "run",
        **{
            "model.backbone": "resnet50",
            "model.detector_weights": str(files[91]),
            "model.fpn_channels": 256,
            "solver.max_iter": 1,
        },
    )
    with caplog.at_level(logging.INFO, logger="dynamask"):
        train(cfg, str(tmp_path / "run"), progress=False)
    assert "labels keep torchvision's label space (label = COCO category id)" in caplog.text
    assert "the box predictor trains" not in caplog.text
    ckpt = torch.load(tmp_path / "run" / "model_final.pt", weights_only=True)
    assert ckpt["cat_ids"] == list(range(1, 91)) and ckpt["num_classes"] == 91
    assert [ckpt["class_names"][i - 1] for i in remap.values()] == [names[i] for i in remap.values()]
    assert ds.cat_ids == sorted(remap.values())  # the file alone keeps its own contiguous labels


def test_evaluate_and_predict_run_a_torchvision_file(files, shapes, tmp_path, capsys):
    from dynamask import cli
    from dynamask.predictor import Predictor

    over = [
        "model.backbone=resnet18",
        "model.head=maskrcnn",
        f"data.val_json={shapes['val_json']}",
        f"data.val_images={shapes['val_dir']}",
        f"input.min_size={SIZE}",
        f"input.max_size={SIZE}",
    ]
    rc = cli.main(["evaluate", "--weights", str(files[9]), *over, "--out", str(tmp_path / "ev")])
    assert rc == 0, capsys.readouterr().err
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["mask_geometry"] == "torchvision" and metrics["num_images"] == 2
    cfg = load_config(
        None, {"model.backbone": "resnet18", "model.head": "maskrcnn", "input.min_size": SIZE, "input.max_size": SIZE}
    )
    predictor = Predictor(str(files[9]), config=cfg)
    out = predictor.predict(torch.rand(3, SIZE, SIZE))
    assert set(out) >= {"boxes", "labels", "scores", "masks"}
