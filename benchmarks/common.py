"""What several benchmark scripts share, in one place.

The scripts run as ``python benchmarks/NAME.py`` (so this folder is on ``sys.path``) and import it
as ``common``. It holds only plumbing that must be the same wherever it is used: the paths, the
machine's description written into every result file, timing a command with the CPU time of its
whole process tree, the package's source at a reference commit (for before/after comparisons in
one run), the detailed shapes' validation set several scripts evaluate on, and the metric keys a
result row keeps. Nothing here measures anything by itself.
"""

from __future__ import annotations

import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
# the demo's shipped head (on its detector): what the evaluation benchmarks run
SHIPPED_HEAD = ROOT / "checkpoints" / "shapes_detail_dynamask_c64.pt"

# what a result row keeps of ``dynamask evaluate``'s metrics (switch and oracle benchmarks)
EVAL_KEYS = (
    "segm_AP",
    "segm_AP50",
    "segm_AP75",
    "boundary_AP",
    "bbox_AP",
    "mask_gflops_per_instance",
    "resolution_histogram",
    "complexity_spearman",
    "complexity_spearman_within_size",
    "num_detections",
)

# set by torchrun in a launcher's environment; a child evaluation must not inherit them
_DISTRIBUTED_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def use_checkout_source() -> None:
    """Import ``dynamask`` from this checkout's ``src/`` (not an installed copy)."""
    src = str(ROOT / "src")
    if src not in sys.path:
        sys.path.insert(0, src)


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    """The machine a result was measured on, as result files record it."""
    return {"cpu": cpu_model(), "cpus": os.cpu_count(), "platform": platform.platform()}


def timed_run(cmd: list, env: dict, *, keep_stderr: bool = False) -> dict:
    """Run ``cmd``: its wall time and the CPU time (user + sys) of its whole process tree.

    CPU time comes from ``RUSAGE_CHILDREN`` around the command, so a launcher's workers (torchrun)
    count too. The 1-minute load average after the run says whether the machine was shared.
    A failing command stops the benchmark with its stderr's tail.
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, cmd[:8]))} ... failed:\n{proc.stderr[-3000:]}")
    user, system = after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime
    run = {
        "wall_s": round(wall, 2),
        "cpu_user_s": round(user, 2),
        "cpu_sys_s": round(system, 2),
        "cpu_s": round(user + system, 2),
        "load_avg_1min_after": os.getloadavg()[0],
    }
    if keep_stderr:
        run["stderr_tail"] = proc.stderr[-600:]
    return run


def child_env(src: Path, threads: int = 1) -> dict:
    """The environment of a child ``python -m dynamask``: ``src`` first on its path, ``threads``
    OpenMP threads, and none of a surrounding torchrun's variables."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "PYTHONPATH": str(src) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    for name in _DISTRIBUTED_VARIABLES:
        env.pop(name, None)
    return env


def reference_source(rev: str, out: Path) -> Path:
    """``src/`` of the package at commit ``rev`` (``git archive``, extracted once under ``out``),
    for comparisons against the code before a change in the same run."""
    target = out / f"src_{rev}"
    if not (target / "src" / "dynamask").is_dir():
        target.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", rev, "src/dynamask"], capture_output=True, check=True
        )
        subprocess.run(["tar", "-x", "-C", str(target)], input=archive.stdout, check=True)
    return target / "src"


def detail_val_set(work: Path, images: int) -> Path:
    """The detailed shapes' first ``images`` validation images (256 px, seed 0, as ``dynamask
    demo`` makes them) under ``work``, made if missing; returns the folder with ``val.json``."""
    data = work / f"detail_{images}"
    if not (data / "val.json").exists():
        use_checkout_source()
        from dynamask.data import generate_shapes_dataset

        generate_shapes_dataset(data, 0, images, image_size=256, seed=0, detail=True)
    return data


def evaluate_shipped_head(data: Path | None) -> list[str]:
    """``dynamask evaluate`` arguments for the shipped head on CPU over ``data``'s validation images;
    with ``data=None`` the same as a result file records it (the head relative to the repository,
    the data paths elided)."""
    if data is None:
        head, data_args = str(SHIPPED_HEAD.relative_to(ROOT)), ["data.val_json=... data.val_images=..."]
    else:
        head, data_args = str(SHIPPED_HEAD), [f"data.val_json={data / 'val.json'}", f"data.val_images={data / 'val'}"]
    return ["evaluate", "--weights", head, "--device", "cpu", "--no-progress", *data_args]
