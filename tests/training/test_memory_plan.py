"""The memory planner: real steps measured as training runs them, batch sizes that keep
each worker's step under budget, out of memory as "does not fit", and a schedule file
that carries them."""

import re
import subprocess
import sys

from support.cli import run

from lofipipe.schemas.config import HeadConfig
from lofipipe.schemas.schedule import PRESETS, load_schedule
from lofipipe.training import memory_plan
from lofipipe.training.memory_plan import StepSettings, step_peak_bytes


def _plan_head(*args) -> str:
    """`lofipipe plan` of head steps on the demo schedule's features."""
    return run("plan", "--schedule", "demo", "--encoder", "tiny", "--mode", "head", *args)


def test_measured_memory_grows_with_the_batch():
    fidelity = PRESETS["demo"].fidelity("t-lofi")
    small, large = (
        step_peak_bytes("lofi", "tiny", fidelity, batch, HeadConfig()) for batch in (1, 8)
    )
    assert 0 < small < large


def test_planned_batches_keep_a_measured_step_under_the_budget(tmp_path):
    output = _plan_head("--budget-gb", "0.16", "--max-batch", "64", "--write", tmp_path / "p.yaml")
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


def test_the_measured_step_is_the_one_training_runs():
    fidelity = PRESETS["demo"].full
    plain, recomputed = (
        step_peak_bytes("lofi", "tiny", fidelity, 4, HeadConfig(), StepSettings(recompute=r))
        for r in (False, True)
    )
    assert recomputed < 0.9 * plain  # activation checkpointing, as the run has it


def test_a_step_that_runs_out_of_memory_does_not_fit():
    # The measuring process inherits an address-space limit its step cannot fit in.
    measure = (
        "from lofipipe.training.memory_plan import step_peak_bytes;"
        "from lofipipe.schemas.config import HeadConfig;"
        "from lofipipe.schemas.schedule import PRESETS;"
        "print(step_peak_bytes('lofi', 'tiny', PRESETS['demo'].full, 512, HeadConfig()))"
    )
    done = subprocess.run(
        ["bash", "-c", f'ulimit -v 4000000; "{sys.executable}" -c "{measure}"'],
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.split() == ["None"]


def test_plans_split_each_batch_over_the_workers(monkeypatch):
    shares = []

    def measured(mode, encoder, fidelity, share, head, settings):
        shares.append(share)
        return None if share > 12 else share * 100  # more than 12 videos: out of memory

    monkeypatch.setattr(memory_plan, "step_peak_bytes", measured)
    full = PRESETS["demo"].full
    # 100 bytes a video per worker, 1000 bytes with the margin: 9 videos a worker.
    plan = memory_plan.plan_fidelity("lofi", "tiny", full, 1000, HeadConfig(), workers=2)
    assert (plan.batch_size, plan.peak_bytes) == (18, 900)
    plan = memory_plan.plan_fidelity("lofi", "tiny", full, 10**6, HeadConfig(), workers=2)
    assert plan.batch_size == 24 and plan.measured[16] is None  # out of memory: too big
    assert max(shares) <= 128  # --max-batch 256 over 2 workers


def test_the_budget_is_capped_by_the_free_memory():
    output = _plan_head("--budget-gb", "100000", "--max-batch", "2", "--workers", "2")
    assert "capped from 100000 by the free memory" in output
    assert re.search(r"^full\s+32x8x64\s+2\s", output, re.M)  # 1 video on each of 2 workers
