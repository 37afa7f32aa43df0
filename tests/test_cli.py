import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from lofipipe.cli import main

COMMANDS = [
    "synth",
    "ingest",
    "materialize",
    "inspect",
    "extract",
    "features",
    "features list",
    "features import",
    "train",
    "plan",
    "eval",
    "status",
    "run",
    "report",
    "demo",
    "weights inspect",
]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_examples(command):
    result = CliRunner().invoke(main, [*command.split(), "--help"])
    assert result.exit_code == 0
    assert "Examples:" in result.output and f"lofipipe {command}" in result.output
    for option in ("--config", "--set", "--storage-option", "--address"):
        assert option in result.output


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "lofipipe"
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    for command in COMMANDS:
        assert command.split()[0] in result.stdout


def test_bad_override_is_exit_2_naming_the_key(tmp_path):
    result = CliRunner().invoke(
        main,
        [
            "ingest",
            str(tmp_path),
            "--videos",
            str(tmp_path),
            "--annotations",
            "a.json",
            "--set",
            "ingest.probe_timeout=5",
        ],
    )
    assert result.exit_code == 2
    assert "error: ingest.probe_timeout: unknown key" in result.output


def test_weights_inspect_names_the_layout_and_the_encoder(tmp_path):
    import torch

    from lofipipe.models.registry import build_encoder

    # The TSM release's layout: DataParallel and TSN wrappers, shifted convs as `.net`.
    net = build_encoder("tsm_r18").net
    state = {}
    for key, value in net.state_dict().items():
        if key.startswith("layer") and ".conv1." in key:
            key = key.replace(".conv1.", ".conv1.net.")
        state[f"module.base_model.{key}"] = value
    state["module.new_fc.weight"] = torch.zeros(200, 512)
    state["module.new_fc.bias"] = torch.zeros(200)
    torch.save({"epoch": 50, "state_dict": state}, tmp_path / "tsm.pth")
    result = CliRunner().invoke(main, ["weights", "inspect", str(tmp_path / "tsm.pth")])
    assert result.exit_code == 0, result.output
    assert "tsm-release" in result.output
    assert re.search(r"^fits\s+tsm_r18$", result.output, re.M), result.output
    parameters = sum(p.numel() for p in net.parameters())  # 11,176,512: ResNet-18 less fc
    assert re.search(rf"^parameters\s+{parameters:,} in ", result.output, re.M), result.output
    assert re.search(r"^ignored\s+2 keys", result.output, re.M), result.output


def test_status_of_an_empty_root(tmp_path):
    result = CliRunner().invoke(main, ["status", str(tmp_path)])
    assert result.exit_code == 0
    assert result.output.splitlines() == [
        "ingest: pending (no manifest)",
        "materialize: pending (no shards)",
        "extract: pending (no feature sets)",
        "train: no runs",
    ]


def test_bad_storage_option_is_a_clear_error(tmp_path):
    result = CliRunner().invoke(main, ["synth", str(tmp_path), "--storage-option", "oops"])
    assert result.exit_code == 1
    assert "storage option oops: expected key=value" in result.output


def test_saved_config_never_holds_credentials(tmp_path):
    """The command line is saved at the top of each resolved config: masked."""
    script = Path(sys.executable).parent / "lofipipe"
    secret = "planted-secret-4f9a2c"
    result = subprocess.run(
        [
            str(script),
            "synth",
            str(tmp_path / "s"),
            "--videos",
            "1",
            "--storage-option",
            f"secret={secret}",
            f"--storage-option=client_kwargs.token={secret}",
            "--storage-option",
            "auto_mkdir=true",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    saved = (tmp_path / "s/synth.yaml").read_text()
    assert secret not in saved
    assert "secret=***" in saved and "auto_mkdir=true" in saved
