"""The memory planner: real steps measured, batch sizes that keep a step under budget,
and a schedule file that carries them."""

import re

from support.cli import run

from lofipipe.schemas.config import HeadConfig
from lofipipe.schemas.schedule import PRESETS, load_schedule
from lofipipe.training.memory_plan import step_peak_bytes


def test_measured_memory_grows_with_the_batch():
    fidelity = PRESETS["demo"].fidelity("t-lofi")
    small, large = (
        step_peak_bytes("lofi", "tiny", fidelity, batch, HeadConfig()) for batch in (1, 8)
    )
    assert 0 < small < large


def test_planned_batches_keep_a_measured_step_under_the_budget(tmp_path):
    output = run(
        "plan",
        "--schedule",
        "demo",
        "--encoder",
        "tiny",
        "--mode",
        "head",
        "--budget-gb",
        "0.16",
        "--max-batch",
        "64",
        "--write",
        tmp_path / "p.yaml",
    )
    batch = int(re.search(r"^full\s+32x8x64\s+(\d+)", output, re.M).group(1))
    assert batch >= 1
    budget = 0.16 * 2**30
    full = PRESETS["demo"].full
    assert step_peak_bytes("head", "tiny", full, batch, HeadConfig()) <= budget
    if batch < 64:
        assert step_peak_bytes("head", "tiny", full, 2 * batch + 2, HeadConfig()) > budget
    planned = load_schedule(str(tmp_path / "p.yaml"))
    assert planned.batch_size_for(planned.full) == batch
    assert planned.batch_size_for(planned.fidelity("t-lofi")) == 4  # not planned: as before
    header = (tmp_path / "p.yaml").read_text().splitlines()[:2]
    assert header[0].startswith("# lofipipe") and "for a 0.16 GiB budget" in header[1]
