"""The README's main command, `lofipipe demo`, as a user runs it: a fresh process that
starts its own Ray, makes its dataset, runs the whole LoFi recipe and points to the run's
report page, which a browser then shows."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from support.browser import render

from lofipipe.cli import main

pytestmark = [pytest.mark.slow, pytest.mark.ray]


def test_demo_runs_the_recipe_and_points_to_its_report(tmp_path):
    script = Path(sys.executable).parent / "lofipipe"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    result = subprocess.run(
        [
            str(script),
            "demo",
            str(tmp_path / "demo"),
            "--set",
            "synth.videos=4",
            "--set",
            "synth.width=64",
            "--set",
            "synth.height=48",
            "--set",
            "ray.num_cpus=2",
            "--set",
            "train.min_steps=0",
        ],
        capture_output=True,
        text=True,
        timeout=500,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "probe:" in result.stderr and "train:" in result.stderr  # live progress lines
    output = result.stdout
    assert "synth: 4 videos" in output
    assert "status: 4 ok, 0 failed" in output
    assert "run demo-lofi: 10 epochs" in output
    assert "run demo-head: 30 epochs" in output
    assert "== evaluate demo-head" in output
    report = tmp_path / "demo/root/runs/demo-head/report.html"
    assert f"the run's report: {report}" in output
    for run in ("demo-lofi", "demo-head"):
        for name in ("predictions.json", "evaluation.json", "report.html"):
            assert (tmp_path / f"demo/root/runs/{run}" / name).exists()
    assert (tmp_path / "demo/root/runs/demo-lofi/encoder.pt").exists()
    status = CliRunner().invoke(main, ["status", str(tmp_path / "demo/root")]).output
    assert "ingest: done, 4 videos ok" in status
    assert "  full: done, 1 shards, 4 videos ok, 0 failed" in status
    assert "extract: 2 feature sets" in status and "weights random:seed=0" in status
    assert "train: 2 runs" in status and "  demo-lofi: lofi, done, best val" in status
    rows = pq.read_table(tmp_path / "demo/root/manifest/videos.parquet").to_pylist()
    assert [r["video_id"] for r in rows] == [f"synth_{i:04d}" for i in range(4)]
    assert {r["subset"] for r in rows} == {"training", "validation"}
    assert len(pq.read_table(tmp_path / "demo/root/annotations.parquet")) > 0

    seen = render(report)  # the page of a real run, as a browser shows it
    assert all(f["complete"] and f["width"] > 0 for f in seen["figures"].values())
    assert len(seen["figures"]) == 4 and seen["fetched"] == []
    evaluation = json.loads((report.parent / "evaluation.json").read_text())
    assert seen["tables"]["map-per-tiou"][0][-1] == f"{100 * evaluation['average_mAP']:.2f}"
    stages = [row[0] for row in seen["tables"]["stage-throughput"]]
    assert [stage.split()[0] for stage in stages] == [
        "ingest",
        "materialize",
        "extract",
        "train",
        "extract",
        "train",
    ]
    assert stages[3:6:2] == ["train demo-lofi", "train demo-head"]
    assert "recipe: lofi" in seen["config"]
