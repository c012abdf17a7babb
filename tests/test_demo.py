"""`dynamask demo --quick`: the whole pipeline (data, training, evaluation, report) runs."""

import json

from dynamask.cli import main


def test_demo_quick_writes_report(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out), "--no-progress"]) == 0
    report = (out / "report.md").read_text()
    assert "| DynaMask dynamic |" in report and "| Mask R-CNN (28×28 head) |" in report
    assert "Quick mode" in report
    for name in ("ap_vs_flops.png", "gallery.png", "results.json"):
        assert (out / name).stat().st_size > 0
    results = json.loads((out / "results.json").read_text())
    names = [r["name"] for r in results["rows"]]
    assert names[0] == "DynaMask dynamic" and names[-1].startswith("Mask R-CNN")
    # every evaluation wrote its metrics file
    assert len(list((out / "eval").glob("*/metrics.json"))) == len(names)
    assert "report written to" in capsys.readouterr().out
