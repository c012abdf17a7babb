"""Multi-process training survives the faults of a cluster (issue 15): ``torchrun
--nproc_per_node=2`` on CPU (Gloo, ``OMP_NUM_THREADS=1``).

* SIGTERM to the launcher: torchrun passes it to every worker; they agree on the step to stop at
  (one all-reduced flag), rank 0 writes ``checkpoint_last.pt`` there and every process ends
  within 60 s; ``--resume`` under the same launch ends with the weights of an uninterrupted run.
* SIGKILL to one rank: the other one's next collective fails, it stops with one clear line naming
  the last complete checkpoint, torchrun ends, all within 60 s; the checkpoint is intact.

Linux only (reads /proc to find the ranks).
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from narrow_model import NARROW_MODEL
from torchrun_launch import TORCHRUN, torchrun_env

from dynamask.config import load_config, save_config
from dynamask.data import generate_shapes_dataset
from dynamask.inference import load_checkpoint

pytestmark = [
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]

ITERS = 12


@pytest.fixture(scope="module")
def ddp_config(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp_faults")
    shapes = generate_shapes_dataset(root / "shapes", 8, 2, image_size=64)
    (Path(shapes["train_dir"]) / "000003.png").write_bytes(b"not a png")  # skipped wherever it comes up
    ov = {
        "data.train_json": shapes["train_json"],
        "data.train_images": shapes["train_dir"],
        **NARROW_MODEL,
        "input.min_size": 64,
        "input.max_size": 64,
        "solver.ims_per_batch": 2,
        "solver.max_iter": ITERS,
        "solver.log_period": 1,
        "solver.checkpoint_period": 2,
        "solver.warmup_iters": 2,
        "solver.base_lr": 0.02,
        "solver.dist_timeout_s": 20,
        "seed": 3,
    }
    path = root / "ddp.yaml"
    save_config(load_config(None, ov), path)
    return path


def launch(cfg_path, out, *extra):
    """torchrun with 2 CPU workers."""
    env = torchrun_env()
    cmd = [
        *TORCHRUN,
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "dynamask",
        "train",
        "--config",
        str(cfg_path),
        "--out",
        str(out),
        "--device",
        "cpu",
        "--no-progress",
        *extra,
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    log = open(out.parent / f"{out.name}.log", "w")  # a file, not a pipe: a full pipe would block the workers
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    proc.log_path = Path(log.name)
    log.close()
    return proc


def _stat(pid):
    """(state, ppid) of a process, or None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return fields[0], int(fields[1])


def alive(pid):
    st = _stat(pid)
    return st is not None and st[0] != "Z"


def workers(launcher_pid):
    """{rank: pid} of the launcher's worker processes (torchrun starts each in its own session)."""
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (_stat(entry) or ("", -1))[1] == launcher_pid:
            try:
                environ = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            ranks = [e[5:] for e in environ if e.startswith(b"RANK=")]
            if ranks:
                found[int(ranks[0])] = int(entry)
    return found


def wait_until(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def logged_iterations(out):
    path = out / "metrics.jsonl"
    if not path.exists():
        return []
    recs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r["iteration"] for r in recs if "event" not in r]


def start_watched(cfg_path, out, *extra):
    """Launch and wait until both workers run and have logged 3 iterations; returns (proc, {rank: pid})."""
    proc = launch(cfg_path, out, *extra)
    wait_until(lambda: len(workers(proc.pid)) == 2 or proc.poll() is not None, 60, "two workers")
    ranks = workers(proc.pid)
    wait_until(lambda: len(logged_iterations(out)) >= 3 or proc.poll() is not None, 180, "3 logged iterations")
    assert proc.poll() is None and len(ranks) == 2, "the run ended before it could be interrupted"
    return proc, ranks


def finish(proc, started, ranks=(), limit=60.0):
    """Wait for the launcher and its workers to end within ``limit`` seconds of ``started``."""
    proc.wait(timeout=limit)
    output = proc.log_path.read_text()
    wait_until(
        lambda: not any(alive(pid) for pid in ranks),
        max(1.0, limit - (time.monotonic() - started)),
        "every worker to exit",
    )
    assert time.monotonic() - started < limit
    return output


def expected_skips(cfg_path):
    """Unreadable-image skips of a 2-process run of ITERS steps: each rank's own stream, summed."""
    from dynamask.data import CocoInstanceDataset
    from dynamask.engine.data_stream import SKIPPED_KEY, InfiniteShardSampler, SeededDataset

    cfg = load_config(str(cfg_path))
    ds = CocoInstanceDataset(cfg["data"]["train_json"], cfg["data"]["train_images"])
    total = 0
    for rank in (0, 1):
        stream = iter(InfiniteShardSampler(len(ds), cfg["seed"], rank=rank, world_size=2))
        seeded = SeededDataset(ds, cfg["seed"])
        total += sum(len(seeded[next(stream)][1].get(SKIPPED_KEY, ())) for _ in range(ITERS))
    return total


@pytest.fixture(scope="module")
def uninterrupted(ddp_config, tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp_straight") / "run"
    proc = launch(ddp_config, out)
    output = finish(proc, time.monotonic(), limit=300)
    assert proc.returncode == 0, output[-3000:]
    # skips happen on both ranks; the log reports their sum (only rank 0 writes metrics.jsonl)
    skips = expected_skips(ddp_config)
    assert skips >= 2
    assert f"{skips} unreadable training image(s) were skipped over all 2 process(es)" in output, output[-3000:]
    return out


def test_sigterm_to_launcher_stops_every_rank_at_one_step_and_resume_is_exact(ddp_config, uninterrupted, tmp_path):
    out = tmp_path / "run"
    proc, ranks = start_watched(ddp_config, out)
    started = time.monotonic()
    os.kill(proc.pid, signal.SIGTERM)
    output = finish(proc, started, ranks.values())
    assert proc.returncode != 0
    stops = [line for line in output.splitlines() if "interrupted (SIGTERM) at iteration" in line]
    assert len(stops) == 2, output[-3000:]  # one line per rank, both at the same step
    step = {int(line.split("at iteration ")[1].split(";")[0]) for line in stops}
    assert len(step) == 1 and step.pop() < ITERS
    ckpt = load_checkpoint(str(out / "checkpoint_last.pt"))
    assert ckpt["iteration"] == int(stops[0].split("at iteration ")[1].split(";")[0])
    assert len(ckpt["rng"]["states"]) == 2

    proc = launch(ddp_config, out, "--resume")
    output = finish(proc, time.monotonic(), limit=300)
    assert proc.returncode == 0, output[-3000:]
    assert logged_iterations(out) == list(range(1, ITERS + 1))
    a = load_checkpoint(str(uninterrupted / "model_final.pt"))["model"]
    b = load_checkpoint(str(out / "model_final.pt"))["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_sigkill_to_one_rank_ends_every_process_and_keeps_the_last_checkpoint(ddp_config, tmp_path):
    out = tmp_path / "run"
    proc, ranks = start_watched(ddp_config, out)
    started = time.monotonic()
    os.kill(ranks[1], signal.SIGKILL)
    output = finish(proc, started, ranks.values())
    assert proc.returncode != 0
    assert "a collective operation failed" in output and "checkpoint_last.pt" in output, output[-3000:]
    ckpt = load_checkpoint(str(out / "checkpoint_last.pt"))  # intact: only rank 0 writes, atomically
    assert ckpt["iteration"] % 2 == 0 and ckpt["iteration"] >= 2 and "optimizer" in ckpt
    assert not [f for f in os.listdir(out) if f.endswith(".tmp") or ".pt." in f]
