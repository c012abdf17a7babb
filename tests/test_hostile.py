"""Hostile inputs through `dynamask train`, `evaluate` and `predict`: every bad COCO file,
image, config or checkpoint ends in a one-line error naming the file and field (exit 2) or in
a counted, logged skip — never a traceback, never a crash mid-epoch, never a partial output
file. Plus property tests (hypothesis) over corrupted annotation fields and config values."""

import json
import logging
import os
import shutil

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from narrow_model import NARROW_MODEL

from dynamask import cli
from dynamask.config import ConfigError, load_config
from dynamask.data import CocoInstanceDataset, generate_shapes_dataset
from dynamask.data.coco import DatasetError
from dynamask.errors import DynaMaskError

pytestmark = [
    pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]

TINY = {
    **NARROW_MODEL,
    "input.min_size": 48,
    "input.max_size": 48,
    "test.max_dets": 10,
    "solver.ims_per_batch": 2,
    "solver.max_iter": 2,
    "solver.log_period": 1,
    "solver.checkpoint_period": 0,
    "test.eval_period": 0,
}


@pytest.fixture(autouse=True)
def restore_logging():
    log = logging.getLogger("dynamask")
    saved = (list(log.handlers), log.level, log.propagate)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
    log.handlers[:] = saved[0]
    log.setLevel(saved[1])
    log.propagate = saved[2]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A valid tiny dataset and a checkpoint trained on it (2 iterations)."""
    root = tmp_path_factory.mktemp("hostile")
    shapes = generate_shapes_dataset(root / "data", 4, 2, image_size=48)
    cfg = load_config(
        None,
        {
            **TINY,
            "data.train_json": shapes["train_json"],
            "data.train_images": shapes["train_dir"],
            "data.val_json": shapes["val_json"],
            "data.val_images": shapes["val_dir"],
        },
    )
    from dynamask.engine.train import train

    torch.set_num_threads(1)
    train(cfg, str(root / "run"), progress=False)
    return {"root": root, "shapes": shapes, "weights": str(root / "run" / "model_final.pt")}


def copy_data(base, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(base["root"] / "data", data)
    return data


def leftovers(folder):
    """Temp files an atomic write would leave if it were not atomic."""
    if not os.path.isdir(folder):
        return []
    return [f for f in os.listdir(folder) if f.startswith(".") or ".tmp" in f]


def run(argv, capsys):
    rc = cli.main(argv)
    out = capsys.readouterr()
    return rc, out.err


def expect_error(rc, err, *needles):
    lines = [line for line in err.strip().splitlines() if line.startswith("error: ")]
    assert rc == 2, err
    assert "Traceback" not in err
    assert lines, err
    for n in needles:
        assert n in lines[-1], (n, lines[-1])


# ------------------------------------------------------------------- bad COCO files for train


def _mutate_json(path, fn):
    data = json.loads(open(path).read())
    result = fn(data)
    with open(path, "w") as f:
        if isinstance(result, str):
            f.write(result)
        else:
            json.dump(data if result is None else result, f)


def _ann0(d):
    return d["annotations"][0]


BAD_COCO = {
    "syntax": (lambda d: '{"images": [', ["invalid JSON"]),
    "not_an_object": (lambda d: [1, 2, 3], ["top level"]),
    "missing_annotations": (lambda d: d.pop("annotations") and None, ["missing top-level key 'annotations'"]),
    "image_without_file_name": (lambda d: d["images"][0].pop("file_name") and None, ["missing field 'file_name'"]),
    "duplicate_image_id": (lambda d: d["images"][1].update(id=d["images"][0]["id"]), ["duplicate image field 'id'"]),
    "category_id_string": (lambda d: d["categories"][0].update(id="one"), ["field 'id' must be an integer"]),
    "bbox_three_numbers": (lambda d: _ann0(d).update(bbox=[1, 2, 3]), ["field 'bbox'"]),
    "segmentation_string": (lambda d: _ann0(d).update(segmentation="polygon"), ["field 'segmentation'"]),
    "rle_without_counts": (lambda d: _ann0(d).update(segmentation={"size": [48, 48]}), ["'counts'"]),
    "iscrowd_seven": (lambda d: _ann0(d).update(iscrowd=7), ["field 'iscrowd'"]),
    "no_categories": (lambda d: d.update(categories=[], annotations=[]), ["lists no categories"]),
    "not_utf8": (lambda d: "\udcff", ["UTF-8"]),
}


@pytest.mark.parametrize("case", sorted(BAD_COCO))
def test_bad_coco_file_is_one_line_error_before_training(base, tmp_path, capsys, case):
    data = copy_data(base, tmp_path)
    mutate, needles = BAD_COCO[case]
    if case == "not_utf8":
        (data / "train.json").write_bytes(b'{"images": [\xff\xfe]}')
    else:
        _mutate_json(data / "train.json", mutate)
    out = tmp_path / "out"
    rc, err = run(
        [
            "train",
            "--out",
            str(out),
            "--no-progress",
            f"data.train_json={data / 'train.json'}",
            f"data.train_images={data / 'train'}",
        ]
        + [f"{k}={v}" for k, v in TINY.items()],
        capsys,
    )
    expect_error(rc, err, str(data / "train.json"), *needles)
    assert not (out / "checkpoint_last.pt").exists() and not leftovers(out)


# ------------------------------------------------------------------- counted skips in train


def _train(data, out, capsys, *extra):
    argv = (
        [
            "train",
            "--out",
            str(out),
            "--no-progress",
            f"data.train_json={data / 'train.json'}",
            f"data.train_images={data / 'train'}",
        ]
        + [f"{k}={v}" for k, v in TINY.items()]
        + list(extra)
    )
    return run(argv, capsys)


def test_skipped_annotations_are_counted_and_training_runs(base, tmp_path, capsys):
    data = copy_data(base, tmp_path)

    def mutate(d):
        d["annotations"][0]["category_id"] = 999  # unknown category
        d["annotations"][1]["bbox"] = [5, 5, -3, 4]  # negative width
        d["annotations"][2]["image_id"] = 12345  # unknown image

    _mutate_json(data / "train.json", mutate)
    rc, err = _train(data, tmp_path / "out", capsys)
    assert rc == 0, err
    assert "skipped 3 of" in err and "unknown_category=1" in err and "degenerate_box=1" in err
    assert "unknown_image=1" in err
    assert (tmp_path / "out" / "model_final.pt").exists() and not leftovers(tmp_path / "out")


def test_missing_and_corrupt_images_are_skipped_not_fatal(base, tmp_path, capsys):
    data = copy_data(base, tmp_path)
    (data / "train" / "000001.png").unlink()  # missing: dropped up front
    (data / "train" / "000002.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")  # corrupt: skipped mid-epoch
    out = tmp_path / "out"
    rc, err = _train(data, out, capsys, "solver.max_iter=3")
    assert rc == 0, err
    assert "skipped 1 image(s) whose files do not exist" in err and "000001.png" in err
    assert "skipped an unreadable training image" in err and "000002.png" in err
    events = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert any(e.get("event") == "skipped_image" for e in events)
    assert (out / "model_final.pt").exists()


def test_wrong_image_folder_is_an_error_before_training(base, tmp_path, capsys):
    data = copy_data(base, tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    rc, err = run(
        [
            "train",
            "--out",
            str(tmp_path / "out"),
            "--no-progress",
            f"data.train_json={data / 'train.json'}",
            f"data.train_images={empty}",
        ]
        + [f"{k}={v}" for k, v in TINY.items()],
        capsys,
    )
    expect_error(rc, err, "data.train_images", "none of the 4 image files", str(empty))


# ------------------------------------------------------------------- bad configs


BAD_CONFIGS = {
    "yaml_syntax": ("solver: [unclosed\n", ["bad.yaml"]),
    "unknown_key": ("solver:\n  max_iters: 5\n", ["solver.max_iters", "max_iter"]),
    "wrong_type": ("solver:\n  base_lr: fast\n", ["solver.base_lr"]),
    "negative_iterations": ("solver:\n  max_iter: -4\n", ["solver.max_iter"]),
    "unknown_policy": ("model:\n  policy: sometimes\n", ["model.policy"]),
    "base_cycle": ("_base_: bad.yaml\n", ["_base_"]),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_bad_config_is_one_line_error(tmp_path, capsys, case):
    text, needles = BAD_CONFIGS[case]
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    rc, err = run(["train", "--config", str(path), "--out", str(tmp_path / "out")], capsys)
    expect_error(rc, err, *needles)
    assert not (tmp_path / "out").exists() or not os.listdir(tmp_path / "out")


# ------------------------------------------------------------------- bad checkpoints and sets for evaluate


def test_bad_checkpoints_for_evaluate_and_predict(base, tmp_path, capsys):
    good = open(base["weights"], "rb").read()
    cases = {
        "random_bytes.pt": (os.urandom(2048), "not a readable dynamask checkpoint"),
        "truncated.pt": (good[: len(good) // 2], "not a readable dynamask checkpoint"),
        "empty.pt": (b"", "not a readable dynamask checkpoint"),
    }
    other = tmp_path / "no_model.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    for name, (content, needle) in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        for cmd in (
            ["evaluate", "--weights", str(path), "--out", str(tmp_path / "ev")],
            ["predict", "--weights", str(path), base["shapes"]["val_dir"], "--out", str(tmp_path / "pr")],
        ):
            rc, err = run(cmd, capsys)
            expect_error(rc, err, str(path), needle)
    rc, err = run(["evaluate", "--weights", str(other)], capsys)
    expect_error(rc, err, str(other), "no 'model' entry")
    for folder in ("ev", "pr"):
        assert not (tmp_path / folder / "metrics.json").exists() and not leftovers(tmp_path / folder)


def test_bad_validation_set_for_evaluate(base, tmp_path, capsys):
    data = copy_data(base, tmp_path)
    _mutate_json(data / "val.json", lambda d: d.pop("images") and None)
    rc, err = run(
        [
            "evaluate",
            "--weights",
            base["weights"],
            f"data.val_json={data / 'val.json'}",
            f"data.val_images={data / 'val'}",
            "--out",
            str(tmp_path / "ev"),
            "--no-progress",
        ],
        capsys,
    )
    expect_error(rc, err, str(data / "val.json"), "'images'")
    assert not (tmp_path / "ev" / "metrics.json").exists() and not leftovers(tmp_path / "ev")


# ------------------------------------------------------------------- bad images and paths for predict


def test_predict_skips_unreadable_images_and_counts_them(base, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(os.path.join(base["shapes"]["val_dir"], "000000.png"), folder / "good.png")
    (folder / "empty.png").write_bytes(b"")
    (folder / "garbage.jpg").write_bytes(os.urandom(500))
    (folder / "notes.txt").write_text("not an image")  # not an image extension: not even looked at
    out = tmp_path / "out"
    rc, err = run(["predict", "--weights", base["weights"], str(folder), "--out", str(out)], capsys)
    assert rc == 0, err
    assert "skipped 2 unreadable image(s)" in err and "empty.png" in err and "garbage.jpg" in err
    assert (out / "good_overlay.png").exists() and (out / "predictions.json").exists()
    assert not leftovers(out)


def test_predict_bad_paths(base, tmp_path, capsys):
    rc, err = run(
        ["predict", "--weights", base["weights"], str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")], capsys
    )
    expect_error(rc, err, "nowhere")
    blocker = tmp_path / "file_not_folder"
    blocker.write_text("x")
    rc, err = run(["predict", "--weights", base["weights"], base["shapes"]["val_dir"], "--out", str(blocker)], capsys)
    expect_error(rc, err, str(blocker))


# ------------------------------------------------------------------- property tests


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**6), 10**6) | st.floats(allow_nan=True) | st.text(max_size=5),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=4), children, max_size=3),
    max_leaves=6,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    section=st.sampled_from(["annotations", "images", "categories"]),
    field=st.sampled_from(
        [
            "id",
            "image_id",
            "category_id",
            "bbox",
            "segmentation",
            "iscrowd",
            "area",
            "file_name",
            "width",
            "height",
            "name",
        ]
    ),
    value=JSON_VALUES,
)
def test_any_corrupted_field_is_loaded_or_named(base, section, field, value):
    """Whatever value lands in whatever field: the dataset loads (maybe with counted skips) and
    every sample decodes, or a DatasetError names the file — no other exception."""
    data = json.loads(open(base["shapes"]["train_json"]).read())
    data[section][0][field] = value
    path = base["root"] / "fuzz.json"
    path.write_text(json.dumps(data))
    try:
        ds = CocoInstanceDataset(str(path), base["shapes"]["train_dir"])
        for i in range(len(ds)):
            ds[i]
    except DatasetError as e:
        assert str(path) in str(e) or "image file" in str(e)


@settings(max_examples=60, deadline=None)
@given(
    key=st.sampled_from(
        [
            "solver.base_lr",
            "solver.max_iter",
            "model.policy",
            "model.head_widths",
            "input.min_size",
            "data.num_workers",
            "model.mask_budget_target",
            "seed",
            "solver.steps",
            "model.fam",
        ]
    ),
    value=JSON_VALUES,
)
def test_any_config_value_is_accepted_or_named(key, value):
    try:
        load_config(None, {key: value})
    except ConfigError as e:
        assert key in str(e)
    except DynaMaskError as e:  # pragma: no cover - a config error must be a ConfigError
        pytest.fail(f"{type(e).__name__}: {e}")
