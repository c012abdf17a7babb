"""The GPU check script runs end to end on CPU (--quick) where pycocotools is missing, as on the
GPU machine; its results JSON holds every section."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_quick_on_cpu_without_pycocotools(tmp_path):
    blocker = tmp_path / "block" / "pycocotools"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('pycocotools is blocked in this test')\n")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tmp_path / "block"), str(ROOT / "src")]),
        "OMP_NUM_THREADS": "1",
    }
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "gpu_check.py"),
            "--device",
            "cpu",
            "--quick",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "gpu_check_cpu_quick.json").read_text())
    assert result["quick"] is True
    inf = result["inference"]
    assert inf["same_detections"] is True
    assert sum(inf["dynamic_histogram"].values()) == inf["detections_per_image"][0] > 0
    assert 0 < inf["summary"]["mask_and_paste_share"] < 1
    assert result["training"]["torchvision"]["amp"] == result["training"]["dynamask"]["amp"] == "bf16"
    assert result["training"]["dynamask"]["images_per_s"] > 0
    shapes = result["shapes_training"]
    assert shapes["finite"] and len(shapes["losses"]) == shapes["iterations"]
    assert "shapes training" in proc.stdout.splitlines()[-1]


def test_pycocotools_missing_gives_a_clear_error(tmp_path):
    blocker = tmp_path / "pycocotools"
    blocker.mkdir()
    (blocker / "__init__.py").write_text("raise ImportError('blocked')\n")
    code = (
        "import numpy as np\nfrom dynamask.data import segmentation_to_rle\n"
        "from dynamask.cocotools import mask_utils\n"
        "try:\n    mask_utils.encode(np.zeros((2, 2), order='F', dtype=np.uint8))\n"
        "except ImportError as e:\n    print('ERR', e)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT / "src")])}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "ERR pycocotools is needed" in proc.stdout and "pip install pycocotools" in proc.stdout
