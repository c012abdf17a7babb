"""Command line: help/version, shapes, one-line errors and exit codes, --debug, train/evaluate/predict wiring."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from dynamask import __version__, cli
from dynamask.cli import shapes as shapes_command
from dynamask.config import load_config, save_config
from dynamask.data import generate_shapes_dataset

pytestmark = [
    pytest.mark.usefixtures("restore_logging"),
    pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return generate_shapes_dataset(tmp_path_factory.mktemp("cli_shapes"), 8, 4, image_size=64)


@pytest.fixture(scope="module")
def small_config(shapes, tmp_path_factory):
    cfg = load_config(
        None,
        {
            "data.train_json": shapes["train_json"],
            "data.train_images": shapes["train_dir"],
            "data.val_json": shapes["val_json"],
            "data.val_images": shapes["val_dir"],
            "data.num_workers": 0,
            "model.backbone": "resnet18",
            "model.fam": "conv",
            "model.rpn_pre_nms_top_n_train": 100,
            "model.rpn_post_nms_top_n_train": 50,
            "model.rpn_pre_nms_top_n_test": 50,
            "model.rpn_post_nms_top_n_test": 20,
            "model.box_batch_size_per_image": 16,
            "model.box_detections_per_img": 10,
            "input.min_size": 64,
            "input.max_size": 64,
            "test.max_dets": 10,
            "solver.ims_per_batch": 2,
            "solver.max_iter": 2,
            "solver.log_period": 1,
            "solver.checkpoint_period": 0,
        },
    )
    path = tmp_path_factory.mktemp("cli_cfg") / "small.yaml"
    save_config(cfg, path)
    return path


def run_cli(*args, cwd=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(k, None)
    return subprocess.run(
        [sys.executable, "-m", "dynamask", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=120
    )


def assert_one_line_error(proc, *needles):
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for n in needles:
        assert n in lines[0]


# ---------------------------------------------------------------- subprocess: python -m dynamask


def test_help_and_version():
    proc = run_cli("--help")
    assert proc.returncode == 0
    for command in ("shapes", "train", "evaluate", "predict", "demo"):
        assert command in proc.stdout
    proc = run_cli("--version")
    assert proc.returncode == 0 and __version__ in proc.stdout
    exe = shutil.which("dynamask", path=os.path.dirname(sys.executable))
    if exe:  # the console script of the installed package
        proc = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0 and __version__ in proc.stdout


def test_unknown_override_key_is_one_line(small_config):
    proc = run_cli("train", "--config", str(small_config), "solver.max_itr=3")
    assert_one_line_error(proc, "solver.max_itr", "solver.max_iter")


def test_missing_config_file_is_one_line(tmp_path):
    missing = tmp_path / "nope.yaml"
    proc = run_cli("train", "--config", str(missing))
    assert_one_line_error(proc, str(missing))


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_shows_traceback(small_config, where):
    args = ["train", "--config", str(small_config), "solver.max_itr=3"]
    args = ["--debug", *args] if where == "before" else [*args, "--debug"]
    proc = run_cli(*args)
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr and "solver.max_itr" in proc.stderr


def test_bad_usage_exits_2():
    proc = run_cli("evaluate")  # --weights missing
    assert proc.returncode == 2 and "--weights" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli("frobnicate")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


# ---------------------------------------------------------------- in-process: cli.main


def test_shapes_creates_dataset(tmp_path, capsys):
    out = tmp_path / "shapes"
    assert cli.main(["shapes", "--out", str(out), "--train", "3", "--val", "2", "--size", "48", "--seed", "1"]) == 0
    for name in ("train.json", "val.json"):
        assert (out / name).is_file()
    assert len(json.loads((out / "train.json").read_text())["images"]) == 3
    assert len(list((out / "val").glob("*.png"))) == 2
    assert "3 images" in capsys.readouterr().out


def test_errors_become_exit_codes(tmp_path, capsys, monkeypatch):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    rc = cli.main(
        [
            "train",
            f"data.train_json={bad}",
            f"data.train_images={tmp_path}",
            "--out",
            str(tmp_path / "o"),
            "model.backbone=resnet18",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith("error: ") and str(bad) in err[-1]

    def boom(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(shapes_command, "cmd_shapes", boom)
    assert cli.main(["shapes", "--out", str(tmp_path / "s")]) == 130
    assert "interrupted" in capsys.readouterr().err

    def bug(args):
        raise TypeError("oops")

    monkeypatch.setattr(shapes_command, "cmd_shapes", bug)
    assert cli.main(["shapes", "--out", str(tmp_path / "s")]) == 1
    err = capsys.readouterr().err
    assert "TypeError" in err and "--debug" in err and "Traceback" not in err
    with pytest.raises(TypeError):
        cli.main(["--debug", "shapes", "--out", str(tmp_path / "s")])

    rc = cli.main(["evaluate", "--weights", str(tmp_path / "missing.pt")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "missing.pt" in err[0]


def test_train_evaluate_predict_end_to_end(small_config, shapes, tmp_path, capsys):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path / "run"
        assert (
            cli.main(
                [
                    "train",
                    "--config",
                    str(small_config),
                    "--out",
                    str(out),
                    "--no-progress",
                    "--device",
                    "cpu",
                    "test.eval_period=0",
                ]
            )
            == 0
        )
        captured = capsys.readouterr()
        assert "model_final.pt" in captured.out
        assert "iter 2/2" in captured.err  # INFO logging on stderr
        weights = out / "model_final.pt"
        assert weights.is_file() and (out / "metrics.jsonl").is_file()

        # --resume with nothing left to do just rewrites the final model
        assert cli.main(["train", "--config", str(small_config), "--out", str(out), "--resume", "--no-progress"]) == 0
        capsys.readouterr()

        ev = tmp_path / "eval"
        assert (
            cli.main(
                [
                    "evaluate",
                    "--weights",
                    str(weights),
                    "--out",
                    str(ev),
                    "--max-images",
                    "2",
                    "--policy",
                    "fixed-28",
                    "--no-progress",
                    "--device",
                    "cpu",
                ]
            )
            == 0
        )
        assert "segm" in capsys.readouterr().out
        assert (ev / "metrics.json").is_file()

        pred = tmp_path / "pred"
        first = sorted(os.listdir(shapes["val_dir"]))[0]
        assert (
            cli.main(
                [
                    "predict",
                    "--weights",
                    str(weights),
                    os.path.join(shapes["val_dir"], first),
                    "--out",
                    str(pred),
                    "--score-thresh",
                    "0.0",
                    "--no-progress",
                    "--device",
                    "cpu",
                ]
            )
            == 0
        )
        assert "predictions" in capsys.readouterr().out
        assert (pred / "predictions.json").is_file()
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize(
    "world_size, argv, status, leaves_early",
    [
        ("2", ["config"], 0, True),
        ("2", ["config", "model.no_such_key=1"], 2, True),
        ("1", ["config"], 0, False),
        (" ", ["config"], 0, False),
        (None, ["config"], 0, False),
        ("two", ["config"], 0, True),  # not a number: never a traceback after the command's work
    ],
)
def test_a_torchrun_worker_leaves_with_its_status_once_done(world_size, argv, status, leaves_early):
    """Under torchrun (WORLD_SIZE > 1, no process group left) ``main`` flushes and leaves with the
    command's status at once, skipping the exit-time teardown that sometimes aborted a finished
    worker; anywhere else it returns as usual."""
    code = f"import sys; from dynamask.cli import main; rc = main({argv!r}); print('MAIN-RETURNED', rc); sys.exit(rc)"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    if world_size is not None:
        env["WORLD_SIZE"] = world_size
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == status, proc.stderr
    assert ("MAIN-RETURNED" in proc.stdout) is not leaves_early
    if status == 0:
        assert "model:" in proc.stdout  # the command's output was flushed before leaving
    else:
        assert "no_such_key" in proc.stderr
