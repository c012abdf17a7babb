"""`dynamask app` without a browser: the viewer's numbers against the model's own, the page's
callbacks on good and bad input (the app keeps working after each), exported files, the queue."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from dynamask import cli
from dynamask.app import callbacks as cb
from dynamask.app.viewer import GATED, MAX_SIDE, Viewer, default_weights, read_image
from dynamask.errors import DynaMaskError

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """The shipped head on the page's own sample images."""
    folder = tmp_path_factory.mktemp("app")
    samples = cb.sample_images(folder / "samples")
    (folder / "downloads").mkdir()
    return cb.AppState(Viewer(default_weights()), samples, folder / "downloads")


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    """A small random-init dynamic checkpoint and its TorchScript export (``.ts``)."""
    from dynamask.config import load_config
    from dynamask.export import export_model, prepare_for_export
    from dynamask.models import build_model

    folder = tmp_path_factory.mktemp("tiny")
    cfg = load_config(
        None,
        {
            "model.backbone": "resnet18",
            "model.policy": "dynamic",
            "input.min_size": 64,
            "input.max_size": 64,
            "model.box_score_thresh": 0.0,
            "model.box_detections_per_img": 5,
        },
    )
    torch.manual_seed(0)
    model = build_model(cfg, 3).eval()
    ckpt = folder / "tiny.pt"
    torch.save(
        {
            "model": model.state_dict(),
            "config": cfg,
            "class_names": ["a", "b"],
            "cat_ids": [1, 2],
            "num_classes": 3,
            "iteration": 0,
        },
        ckpt,
    )
    exported = folder / "tiny.ts"
    export_model(
        prepare_for_export(model), "torchscript", str(exported), ["a", "b"], [1, 2], example=torch.rand(3, 64, 64)
    )
    return ckpt, exported


def _first(app):
    label = next(iter(app.samples))
    return cb.pick_sample(app, label)


def test_the_dial_in_the_viewer_matches_the_model(app):
    source = _first(app)
    image = read_image(source[0])
    viewer = app.viewer
    free = viewer.run(image, source[0], "dynamic", 1.0, 0.5)
    low = viewer.run(image, source[0], "dynamic", viewer.lowest_budget, 0.5)
    model = viewer.predictor.model
    model.policy = "fixed-112"
    ref = viewer.predictor.predict(image)
    model.policy = "dynamic"
    assert free.reference_gflops == pytest.approx(float(ref["mask_flops"].double().sum()) / 1e9)
    assert low.mask_gflops < free.mask_gflops < free.reference_gflops
    assert low.share == pytest.approx(low.mask_gflops / free.reference_gflops)
    assert low.shown_counts[14] == len(low.rows) > free.shown_counts[14]  # the lowest budget: all at 14×14
    assert not np.array_equal(low.overlay, free.overlay) and np.array_equal(low.reference, free.reference)
    assert len(free.coco_results) == len(free.rows) and {e["mask_resolution"] for e in low.coco_results} == {14}
    assert 0 < free.mask_seconds < free.model_seconds
    # the model is left as it was: policy, budget, floor
    assert (model.policy, model.mask_budget, model.mask_score_floor) == ("dynamic", 1.0, 0.0)


def _inside(viewer) -> float:
    """A budget a third of the way into the head's reachable range (lowest budget .. 1)."""
    return viewer.lowest_budget + (1.0 - viewer.lowest_budget) / 3


def test_gated_control_costs_what_dynamic_costs(app):
    source = _first(app)
    image = read_image(source[0])
    budget = _inside(app.viewer)
    dynamic = app.viewer.run(image, source[0], "dynamic", budget, 0.0)
    gated = app.viewer.run(image, source[0], GATED, budget, 0.0)
    costs = app.viewer.predictor.model.mask_branch.stage_costs(with_switch=False)
    step = float(costs[-1] - costs[0]) / 1e9  # one detection moved across the floor
    assert 0 < gated.score_floor < 1 and {r[3] for r in gated.rows} <= {"14×14", "112×112"}
    assert abs(gated.mask_gflops - dynamic.mask_gflops) <= step
    assert app.viewer.predictor.model.mask_score_floor == 0.0


def test_render_shows_numbers_table_and_downloads(app):
    source = _first(app)
    message, overlay, reference, summary, rows, downloads = cb.render(app, source, "fixed-28", 0.5, 0.5)
    assert message == "" and overlay.shape == reference.shape and overlay.dtype == np.uint8
    assert "policy:** fixed-28 (budget not used by this policy)" in summary and f"28×28: {len(rows)}" in summary
    assert all(r[3] == "28×28" for r in rows)
    png, coco = downloads
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    entries = json.loads(open(coco).read())
    assert len(entries) == len(rows) and entries[0]["category_name"] == rows[0][1]
    assert entries[0]["file_name"] == source[0] and "segmentation" in entries[0]


@pytest.mark.parametrize(
    "content, needle",
    [
        (b"\x89PNG\r\n\x1a\n" + b"garbage" * 40, "not an image"),
        (b"just some text, not an image", "not an image"),
        (None, f"over the viewer's limit of {MAX_SIDE} px"),
    ],
)
def test_bad_images_give_a_message_and_the_app_keeps_working(app, tmp_path, content, needle):
    path = tmp_path / "bad.png"
    if content is None:  # a real PNG, small on disk, too wide
        from PIL import Image

        Image.new("RGB", (MAX_SIDE + 1, 4)).save(path)
    else:
        path.write_bytes(content)
    message, overlay, reference, summary, rows, downloads = cb.render(
        app, cb.take_upload(str(path)), "dynamic", 1.0, 0.5
    )
    assert message.startswith("**Error:** bad.png: ") and needle in message
    assert overlay is None and summary == "" and downloads is None
    assert cb.render(app, _first(app), "dynamic", 1.0, 0.5)[0] == ""


def test_bad_controls_give_a_message(app):
    source = _first(app)
    assert "outside this head's range" in cb.render(app, source, "dynamic", 0.01, 0.5)[0]
    assert "offers dynamic" in cb.render(app, source, "fixed-7", 1.0, 0.5)[0]
    assert "pick a sample" in cb.render(app, None, "dynamic", 1.0, 0.5)[0]


def test_loading_a_broken_model_keeps_the_current_one(app, tmp_path, tiny_files):
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"PK\x03\x04 half a checkpoint")
    before = app.viewer
    message, description, settings = cb.load_weights(app, str(broken))
    assert "cannot load the model" in message and "broken.pt" in message and "stays loaded" in message
    assert app.viewer is before and settings is None and before.name in description
    try:
        message, description, settings = cb.load_weights(app, str(tiny_files[0]))
        assert message == "" and "tiny.pt" in description and "**Classes (2):** a, b" in description
        assert settings["budget_enabled"] and settings["policies"][0] == "dynamic"
        assert settings["budget_min"] >= app.viewer.lowest_budget
    finally:
        app.viewer = before


def test_exported_file_disables_the_controls_and_says_why(app, tiny_files):
    viewer = Viewer(tiny_files[1])
    settings = cb.control_settings(viewer)
    assert not settings["policy_enabled"] and not settings["budget_enabled"]
    assert "exported file" in settings["note"] and "budget dial" in settings["note"]
    view = viewer.run(read_image(_first(app)[0]), "x", "fixed-14", 0.2, 0.0)  # the file's own policy runs
    assert view.policy == "dynamic" and view.mask_seconds is None and view.reference is None
    assert "mask branch not measured" in cb.summary_markdown(view, "x.png", 0.0)


def test_outside_a_clone_the_message_says_what_to_do(monkeypatch, tmp_path):
    from dynamask.engine import demo

    monkeypatch.setattr(demo, "REPO_ROOT", tmp_path)
    with pytest.raises(DynaMaskError, match="shipped checkpoints and these are missing.*--weights FILE"):
        default_weights()


def test_cli_refuses_a_missing_model(tmp_path, capsys, restore_logging):
    pytest.importorskip("gradio")
    assert cli.main(["app", "--weights", str(tmp_path / "none.pt"), "--port", "7861"]) == 2
    assert "cannot load the model" in (err := capsys.readouterr().err) and "none.pt: weights file not found" in err


def test_every_model_event_shares_one_queue_slot(app):
    pytest.importorskip("gradio")
    from dynamask.app.page import build_page

    page = build_page(app)
    events = [f for f in page.fns.values() if f.fn is not None and f.name != "<lambda>"]
    assert len(events) >= 8
    assert all(f.concurrency_limit == 1 and f.concurrency_id == "model" for f in events)
    assert os.environ["GRADIO_ANALYTICS_ENABLED"] == "False"


def test_a_mask_rcnn_head_offers_only_its_one_resolution(app):
    viewer = Viewer(os.path.join(os.path.dirname(default_weights()), "shapes_detail_maskrcnn_c64.pt"))
    settings = cb.control_settings(viewer)
    assert settings["policies"] == ["fixed-28"] and not settings["policy_enabled"] and not settings["budget_enabled"]
    assert "Mask R-CNN head" in settings["note"]
    view = viewer.run(read_image(_first(app)[0]), "x", "dynamic", 0.3, 0.5)
    assert view.policy == "fixed-28" and view.reference is None and set(r[3] for r in view.rows) == {"28×28"}


def test_runs_from_two_threads_take_turns(app):
    """The page's queue serialises requests; the viewer's lock does the same for direct callers."""
    import threading
    import time

    viewer, spans = app.viewer, []
    forward = viewer._forward

    def recorded(image):
        start = time.perf_counter()
        out = forward(image)
        spans.append((start, time.perf_counter()))
        return out

    source = _first(app)
    image = read_image(source[0])
    viewer._forward = recorded
    try:
        threads = [
            threading.Thread(target=viewer.run, args=(image, source[0], "dynamic", b, 0.5))
            for b in (_inside(viewer), 1.0)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        del viewer._forward
    spans.sort()  # two runs (and the fixed-112 reference, once): no forward overlaps another
    assert len(spans) >= 2 and all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))
