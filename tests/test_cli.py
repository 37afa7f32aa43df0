import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from browser import render
from click.testing import CliRunner

from lofipipe.cli import main

COMMANDS = ["synth", "ingest", "materialize", "inspect", "extract", "features", "train", "plan",
            "eval", "status", "run", "report", "demo"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_examples(command):
    result = CliRunner().invoke(main, [command, "--help"])
    assert result.exit_code == 0
    assert "Examples:" in result.output and f"lofipipe {command}" in result.output
    for option in ("--config", "--set", "--storage-option", "--address"):
        assert option in result.output


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "lofipipe"
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0
    for command in COMMANDS:
        assert command in result.stdout


def test_bad_override_is_exit_2_naming_the_key(tmp_path):
    result = CliRunner().invoke(main, ["ingest", str(tmp_path), "--videos", str(tmp_path),
                                       "--annotations", "a.json",
                                       "--set", "ingest.probe_timeout=5"])
    assert result.exit_code == 2
    assert "error: ingest.probe_timeout: unknown key" in result.output


def test_status_of_an_empty_root(tmp_path):
    result = CliRunner().invoke(main, ["status", str(tmp_path)])
    assert result.exit_code == 0
    assert result.output.splitlines() == [
        "ingest: pending (no manifest)", "materialize: pending (no shards)",
        "extract: pending (no feature sets)", "train: no runs"]


def test_bad_storage_option_is_a_clear_error(tmp_path):
    result = CliRunner().invoke(main, ["synth", str(tmp_path), "--storage-option", "oops"])
    assert result.exit_code == 1
    assert "storage option oops: expected key=value" in result.output


@pytest.mark.ray
def test_demo_runs_the_recipe_and_points_to_its_report(ray_local, tmp_path):
    result = CliRunner().invoke(main, [
        "demo", str(tmp_path / "demo"), "--set", "synth.videos=4",
        "--set", "synth.width=64", "--set", "synth.height=48"])
    assert result.exit_code == 0, result.output
    assert "synth: 4 videos" in result.output
    assert "status: 4 ok, 0 failed" in result.output
    assert "run demo-lofi: 10 epochs" in result.output
    assert "run demo-head: 30 epochs" in result.output
    assert "== evaluate demo-head" in result.output
    report = tmp_path / "demo/root/runs/demo-head/report.html"
    assert f"the run's report: {report}" in result.output
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
        "ingest", "materialize", "extract", "train", "extract", "train"]
    assert stages[3:6:2] == ["train demo-lofi", "train demo-head"]
    assert "recipe: lofi" in seen["config"]


@pytest.mark.slow
def test_demo_as_a_user_runs_it(tmp_path):
    """The README's main command, in a fresh process that starts its own Ray."""
    script = Path(sys.executable).parent / "lofipipe"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    result = subprocess.run([str(script), "demo", str(tmp_path / "demo"), "--set",
                             "synth.videos=6", "--set", "ray.num_cpus=2"],
                            capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "status: 6 ok, 0 failed" in result.stdout
    assert "run demo-lofi: 10 epochs" in result.stdout and "run demo-head: 30" in result.stdout
    assert "the run's report:" in result.stdout
    assert "probe:" in result.stderr and "train:" in result.stderr  # live progress lines


def test_saved_config_never_holds_credentials(tmp_path):
    """The command line is saved at the top of each resolved config: masked."""
    script = Path(sys.executable).parent / "lofipipe"
    secret = "planted-secret-4f9a2c"
    result = subprocess.run([str(script), "synth", str(tmp_path / "s"), "--videos", "1",
                             "--storage-option", f"secret={secret}",
                             f"--storage-option=client_kwargs.token={secret}",
                             "--storage-option", "auto_mkdir=true"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    saved = (tmp_path / "s/synth.yaml").read_text()
    assert secret not in saved
    assert "secret=***" in saved and "auto_mkdir=true" in saved
