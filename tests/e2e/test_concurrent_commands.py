"""Two lofipipe commands started at once on one machine, as two users (or two terminals)
start them: each gets a Ray of its own, and both finish with clean output."""

import os
import re
import subprocess

import pytest
from support.cluster import LOFIPIPE
from support.feature_data import FINGERPRINT, write_feature_set

from lofipipe.storage import Store

pytestmark = [pytest.mark.slow, pytest.mark.ray]

# What Ray prints when something goes wrong inside it: Python tracebacks, and the error
# lines of its C++ core ("[2026-... E 1234 1234] core_worker.cc:...").
RAY_NOISE = re.compile(r"Traceback|Exception in thread|\] E \d+|core_worker\.cc|raylet\.cc")


def test_two_commands_at_once_both_finish_without_tracebacks(ray_local, tmp_path):
    # This test session's own Ray is a third instance on the machine.
    environment = {**os.environ}
    environment.pop("RAY_ADDRESS", None)
    commands = []
    for name in ("a", "b"):
        root = tmp_path / name
        write_feature_set(Store(str(root)), videos=6, snippets=32)
        commands.append(
            subprocess.Popen(
                [
                    LOFIPIPE,
                    "train",
                    str(root),
                    "--mode",
                    "head",
                    "--features",
                    FINGERPRINT,
                    "--run",
                    name,
                    "--set",
                    "train.epochs=2",
                    "--set",
                    "train.batch_size=2",
                    "--set",
                    "train.min_steps=0",
                    "--set",
                    "ray.num_cpus=1",
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=environment,
            )
        )
    for name, command in zip("ab", commands, strict=True):
        out, err = command.communicate(timeout=300)
        assert command.returncode == 0, err[-3000:]
        assert f"run {name}: 2 epochs" in out
        assert not RAY_NOISE.search(out + err), (out + err)[-3000:]
