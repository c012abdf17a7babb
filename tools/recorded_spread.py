"""How far the recorded-value tests' numbers move under what differs between x86-64 machines.

The tests marked ``recorded`` (``pytest -m recorded``) compare today's numbers with numbers
recorded once on one CPU: ``tests/test_train_step.py`` (one training step,
``tests/data/train_step_losses.json``), ``tests/test_reference_run.py`` (a 20-iteration run,
``tests/data/reference_training_run.json``) and the pinned digests of rendered shapes in
``tests/test_detail_shapes.py``. Their tolerances come from this script: it reruns those
computations in a fresh process per setting, the settings being what another machine changes
(thread count; torch's kernels ``ATEN_CPU_CAPABILITY``; oneDNN's ``ONEDNN_MAX_CPU_ISA``; MKL's code
paths ``MKL_CBWR`` / ``MKL_ENABLE_INSTRUCTIONS``; NumPy's and OpenCV's SIMD dispatch for the
shapes), and prints each one's largest deviation from the recorded numbers::

    python tools/recorded_spread.py                       # every setting, every computation
    python tools/recorded_spread.py --only train_step --settings threads1 aten_default

A setting that asks for more than the CPU has (``ATEN_CPU_CAPABILITY=avx512`` on an AVX2 CPU) is
the default there; the table says which capability each run had.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# name -> (intra-op threads, environment)
SETTINGS = {
    "threads1": (1, {}),
    "threads2": (2, {}),
    "aten_default": (1, {"ATEN_CPU_CAPABILITY": "default"}),
    "aten_avx2": (1, {"ATEN_CPU_CAPABILITY": "avx2"}),
    "aten_avx512": (1, {"ATEN_CPU_CAPABILITY": "avx512"}),
    "onednn_sse41": (1, {"ONEDNN_MAX_CPU_ISA": "SSE41"}),
    "onednn_avx2": (1, {"ONEDNN_MAX_CPU_ISA": "AVX2"}),
    "mkl_cbwr_compatible": (1, {"MKL_CBWR": "COMPATIBLE"}),
    "mkl_cbwr_avx": (1, {"MKL_CBWR": "AVX"}),
    "mkl_sse4_2": (1, {"MKL_ENABLE_INSTRUCTIONS": "SSE4_2"}),
    "mkl_avx2": (1, {"MKL_ENABLE_INSTRUCTIONS": "AVX2"}),
    # what .ci/run's second pass sets on an AVX2 (or older) machine, and on an AVX-512 one
    "ci_second_pass": (1, {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41", "MKL_CBWR": "COMPATIBLE"}),
    "ci_second_pass_on_avx512": (
        1,
        {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
    ),
    # everything at once, and two threads
    "all_low_2threads": (
        2,
        {
            "ATEN_CPU_CAPABILITY": "default",
            "ONEDNN_MAX_CPU_ISA": "SSE41",
            "MKL_ENABLE_INSTRUCTIONS": "SSE4_2",
            "MKL_CBWR": "COMPATIBLE",
        },
    ),
    # the shapes are drawn with NumPy (sin/cos) and OpenCV (fillPoly): their SIMD dispatch
    # (NumPy 2.4 groups its features; x86-64-v2 is its baseline and cannot be turned off)
    "numpy_v2_only": (1, {"NPY_DISABLE_CPU_FEATURES": "X86_V3 X86_V4 AVX512_ICL AVX512_SPR"}),
    "opencv_sse3_only": (1, {"OPENCV_CPU_DISABLE": "AVX512_SKX,AVX2,FMA3,AVX,FP16,POPCNT,SSE4_2"}),
}
COMPUTATIONS = ("train_step", "reference_run", "shapes")


def _module(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def _shape_digests() -> dict:
    """Digests of the renders pinned in tests/test_detail_shapes.py, and of 40 more (seed, index)."""
    import numpy as np

    from dynamask.data import render_shapes_image

    test = _module(ROOT / "tests" / "test_detail_shapes.py", "_test_detail_shapes")
    keys = sorted(set(test._PINNED) | {(s, i) for s in (1, 2, 5, 7) for i in range(10)})
    out = {}
    for seed, index in keys:
        _, inst = render_shapes_image(np.random.default_rng([seed, 0, index]), 128)
        out[f"{seed},{index}"] = test._digest(inst)
    return {"digests": out, "pinned": {f"{s},{i}": d for (s, i), d in test._PINNED.items()}}


def worker(threads: int, only: list[str]) -> dict:
    import torch

    torch.set_num_threads(threads)
    result = {"capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads()}
    t0 = time.perf_counter()
    if "train_step" in only:
        tool = _module(ROOT / "tools" / "train_step_losses.py", "train_step_losses")
        result["train_step"] = {k: tool.train_step_losses(steps=1, deform_kernel=k)[0] for k in ("auto", "torchvision")}
    if "reference_run" in only:
        tool = _module(ROOT / "tools" / "reference_training_run.py", "reference_training_run")
        with tempfile.TemporaryDirectory() as tmp:
            run = tool.reference_run(tmp)
        result["reference_run"] = {
            "metrics": run["metrics"],
            "weights": {k: {"norm": v["norm"], "sha256": v["sha256"]} for k, v in run["weights"].items()},
        }
    if "shapes" in only:
        result["shapes"] = _shape_digests()
    result["seconds"] = time.perf_counter() - t0
    return result


def _rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


def deviations(result: dict) -> dict:
    """Largest deviations from the recorded numbers, by kind of number."""
    out = {}
    if "train_step" in result:
        ref = json.loads((ROOT / "tests/data/train_step_losses.json").read_text())["steps"][0]
        losses = [
            abs(got[k] - v) for got in result["train_step"].values() for k, v in ref.items() if k.startswith("loss")
        ]
        grads = [
            _rel(got[k], v) for got in result["train_step"].values() for k, v in ref.items() if not k.startswith("loss")
        ]
        out["train_step loss |d|"] = max(losses)
        out["train_step loss rel"] = max(
            _rel(got[k], v)
            for got in result["train_step"].values()
            for k, v in ref.items()
            if k.startswith("loss") and v
        )
        out["train_step grad_norm rel"] = max(grads)
    if "reference_run" in result:
        ref = json.loads((ROOT / "tests/data/reference_training_run.json").read_text())
        now = result["reference_run"]
        exact = early = late = 0.0
        early_abs = 0.0
        mismatched = 0
        if len(now["metrics"]) != len(ref["metrics"]):
            mismatched = abs(len(now["metrics"]) - len(ref["metrics"]))
        for got, want in zip(now["metrics"], ref["metrics"]):
            for key, value in want.items():
                if key == "weights_sha256" or key not in got:
                    mismatched += key != "weights_sha256"
                    continue
                if key in ("lr", "iteration", "epoch", "event") or not isinstance(value, float):
                    if isinstance(value, float):
                        exact = max(exact, _rel(got[key], value))
                    elif got[key] != value:
                        mismatched += 1
                elif want.get("iteration", 0) <= 6:
                    early = max(early, _rel(got[key], value) if abs(value) > 1e-5 else 0.0)
                    early_abs = max(early_abs, abs(got[key] - value))
                else:
                    late = max(late, _rel(got[key], value) if abs(value) > 1e-5 else 0.0)
        shared = [k for k in ref["weights"] if k in now["weights"]]
        big = [
            _rel(now["weights"][k]["norm"], ref["weights"][k]["norm"])
            for k in shared
            if abs(ref["weights"][k]["norm"]) >= 0.1
        ]
        small = [
            abs(now["weights"][k]["norm"] - ref["weights"][k]["norm"])
            for k in shared
            if abs(ref["weights"][k]["norm"]) < 0.1
        ]
        out["ref_run schedule/counters rel"] = exact
        out["ref_run mismatched fields"] = mismatched
        out["ref_run iter<=6 floats rel"] = early
        out["ref_run iter<=6 floats |d|"] = early_abs
        out["ref_run iter>6 floats rel (not checked)"] = late
        out["ref_run weight norm rel (norm >= 0.1)"] = max(big, default=0.0)
        out["ref_run weight norm |d| (norm < 0.1)"] = max(small, default=0.0)
        out["ref_run weight tensors added or missing"] = len(set(now["weights"]) ^ set(ref["weights"]))
        out["ref_run weights bit-equal"] = sum(
            now["weights"][k]["sha256"] == v["sha256"] for k, v in ref["weights"].items() if k in now["weights"]
        ) / len(ref["weights"])
    if "shapes" in result:
        s = result["shapes"]
        out["shapes pinned digests differing"] = sum(s["digests"][k] != d for k, d in s["pinned"].items())
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--settings", nargs="+", choices=sorted(SETTINGS), default=list(SETTINGS))
    p.add_argument("--only", nargs="+", choices=COMPUTATIONS, default=list(COMPUTATIONS))
    p.add_argument("--json", default=None, help="also write every setting's raw numbers here")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(SETTINGS[args.worker][0], args.only)))
        return

    results, table = {}, {}
    base_shapes = None
    natural = subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.backends.cpu.get_cpu_capability())"],
        capture_output=True,
        text=True,
        env={**os.environ, "ATEN_CPU_CAPABILITY": ""},
    ).stdout.strip()
    print(f"this CPU: torch capability {natural}, {os.cpu_count()} CPUs")
    levels = ["DEFAULT", "AVX2", "AVX512"]
    for name in args.settings:
        threads, env = SETTINGS[name]
        wanted = env.get("ATEN_CPU_CAPABILITY", "").upper()
        if wanted in levels and natural in levels and levels.index(wanted) > levels.index(natural):
            print(f"\n{name}: skipped (torch would run {wanted} kernels on a CPU without them)")
            continue
        full_env = {**os.environ, **env, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT / "src")}
        proc = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--only", *args.only],
            env=full_env,
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            print(f"{name}: failed\n{proc.stderr[-3000:]}", file=sys.stderr)
            continue
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        results[name] = res
        table[name] = deviations(res)
        if "shapes" in res:
            base_shapes = base_shapes or res["shapes"]["digests"]
            table[name][f"shapes: renders differing from the first setting's (of {len(base_shapes)})"] = sum(
                res["shapes"]["digests"][k] != v for k, v in base_shapes.items()
            )
        env_text = " ".join(f"{k}={v}" for k, v in env.items()) or "-"
        print(
            f"\n{name}: {res['threads']} thread(s), capability {res['capability']}, {env_text}, {res['seconds']:.0f} s",
            flush=True,
        )
        for key, value in table[name].items():
            print(f"  {key:58s} {value:.3g}" if isinstance(value, float) else f"  {key:58s} {value}", flush=True)
    if table:
        print("\nlargest over all settings:")
        for key in next(iter(table.values())):
            values = [t[key] for t in table.values() if key in t]
            worst = max(values)
            if "bit-equal" in key:
                worst = min(values)
            print(
                f"  {key:58s} {worst:.3g}"
                if isinstance(worst, float) and not math.isnan(worst)
                else f"  {key:58s} {worst}"
            )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
