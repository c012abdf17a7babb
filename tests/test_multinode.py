"""Multi-node launch, tested on one machine (issue 26, part 4): two "nodes" -- two torchrun
launchers, ``--nnodes 2 --node-rank 0|1 --nproc-per-node 1 --rdzv-backend c10d --rdzv-endpoint
127.0.0.1:PORT``, Gloo on CPU -- train a few iterations with periodic evaluation (every process
evaluates its shard) and then evaluate the final model sharded. The numbers are those of one
process evaluating the same weights.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import pytest
from narrow_model import NARROW_MODEL
from torchrun_launch import TORCHRUN, torchrun_env

from dynamask.config import load_config, save_config
from dynamask.data import generate_shapes_dataset
from dynamask.engine.evaluate import evaluate

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="torchrun's c10d rendezvous on one machine"),
    pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]

ITERS, EVAL_PERIOD = 4, 2


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_nodes(tmp_path, name, *args, timeout=240):
    """Start the same ``dynamask`` command as two one-process nodes that meet at a c10d
    rendezvous on 127.0.0.1; wait for both; returns their logs."""
    port = free_port()
    env = torchrun_env()
    procs, logs = [], []
    for node in (0, 1):
        cmd = [
            *TORCHRUN,
            "--nnodes",
            "2",
            "--node-rank",
            str(node),
            "--nproc-per-node",
            "1",
            "--rdzv-backend",
            "c10d",
            "--rdzv-endpoint",
            f"127.0.0.1:{port}",
            "--rdzv-id",
            name,
            "-m",
            "dynamask",
            *args,
        ]
        log = tmp_path / f"{name}.node{node}.log"
        with open(log, "w") as f:  # a file, not a pipe: a full pipe would block the node
            procs.append(subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, text=True))
        logs.append(log)
    deadline = time.monotonic() + timeout
    try:
        for proc in procs:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    texts = [log.read_text() for log in logs]
    for proc, text in zip(procs, texts):
        assert proc.returncode == 0, text[-4000:]
        assert "Traceback" not in text, text[-4000:]
    return texts


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    root = tmp_path_factory.mktemp("multinode")
    shapes = generate_shapes_dataset(root / "shapes", 6, 3, image_size=64)
    ov = {
        "data.train_json": shapes["train_json"],
        "data.train_images": shapes["train_dir"],
        "data.val_json": shapes["val_json"],
        "data.val_images": shapes["val_dir"],
        **NARROW_MODEL,
        "model.box_score_thresh": 0.0,
        "input.min_size": 64,
        "input.max_size": 64,
        "test.eval_period": EVAL_PERIOD,
        "test.max_dets": 10,
        "test.score_thresh": 0.0,
        "solver.ims_per_batch": 2,
        "solver.max_iter": ITERS,
        "solver.log_period": 1,
        "solver.checkpoint_period": 0,
        "solver.warmup_iters": 2,
        "solver.base_lr": 0.02,
        "solver.dist_timeout_s": 60,
        "seed": 3,
    }
    path = root / "multinode.yaml"
    save_config(load_config(None, ov), path)
    return path


def test_two_nodes_train_with_sharded_evaluation_then_evaluate_sharded(config, tmp_path):
    out = tmp_path / "run"
    logs = two_nodes(
        tmp_path, "train", "train", "--config", str(config), "--out", str(out), "--device", "cpu", "--no-progress"
    )
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    final = records[-1]
    assert final["event"] == "final" and final["world_size"] == 2 and len(set(final["weights_sha256"])) == 1
    evals = [r for r in records if r.get("event") == "eval"]
    assert [r["iteration"] for r in evals] == [EVAL_PERIOD, ITERS]
    # 3 validation images, batches of 2: one process takes 2 images, the other 1, every time
    assert sum(text.count("evaluated 3 image(s) on 2 processes (2/1 image(s) each)") for text in logs) == 2
    assert all(r["metrics"]["eval_processes"] == 2 and r["metrics"]["num_images"] == 3 for r in evals)

    ev = tmp_path / "eval"
    logs = two_nodes(
        tmp_path,
        "evaluate",
        "evaluate",
        "--weights",
        str(out / "model_final.pt"),
        "--out",
        str(ev),
        "--device",
        "cpu",
        "--no-progress",
    )
    assert sum(text.count("metrics written to") for text in logs) == 1  # rank 0 (either node) prints, once
    sharded = json.loads((ev / "metrics.json").read_text())
    single = evaluate(weights=str(out / "model_final.pt"), device="cpu", progress=False)
    assert sharded["num_detections"] > 0
    for metrics in (sharded, evals[-1]["metrics"]):  # the final periodic evaluation: the same weights
        same = {k: v for k, v in metrics.items() if k not in ("images_per_second", "eval_processes")}
        expected = {k: v for k, v in single.items() if k != "images_per_second"}
        expected["resolution_histogram"] = {str(r): n for r, n in expected["resolution_histogram"].items()}
        assert same == json.loads(json.dumps(expected))
