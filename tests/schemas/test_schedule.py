import pytest

from lofipipe.errors import ConfigError
from lofipipe.schemas.schedule import PRESETS, load_schedule


def test_lofi_anet_is_the_papers_setting():
    schedule = PRESETS["lofi-anet"]
    shapes = {f.name: (f.snippets, f.frames, f.size) for f in schedule.fidelities}
    assert shapes == {
        "full": (100, 8, 224),
        "s-lofi": (100, 8, 112),
        "t-lofi": (25, 8, 224),
        "st-lofi": (50, 8, 158),
    }
    full = schedule.full.pixels
    for fidelity in schedule.train:  # each keeps the pixels per video (about) constant
        assert fidelity.pixels == pytest.approx(full / 4, rel=0.01)
    assert schedule.batch_size_for(schedule.train[0]) == 16


def test_cycles():
    long, short = PRESETS["lofi-anet"], PRESETS["lofi-anet-short"]
    assert [long.step(epoch, 5)[0].name for epoch in range(4)] == [
        "s-lofi",
        "t-lofi",
        "st-lofi",
        "s-lofi",
    ]
    assert [short.step(0, batch)[0].name for batch in (0, 15, 16, 47, 48)] == [
        "s-lofi",
        "s-lofi",
        "t-lofi",
        "st-lofi",
        "s-lofi",
    ]
    multigrid = PRESETS["multigrid"]
    sizes = [multigrid.step(epoch, 0) for epoch in range(4)]
    # 16 * (100*8*224^2) / (T*S^2): 25@158 -> 129, 50@158 -> 64, 50@224 -> 32, 100@224 -> 16
    assert [(f.name, batch) for f, batch in sizes] == [
        ("mg-1", 129),
        ("mg-2", 64),
        ("mg-3", 32),
        ("mg-4", 16),
    ]


def test_thumos_strides_cover_the_same_window():
    schedule = PRESETS["lofi-thumos"]
    for fidelity in schedule.fidelities:
        span = fidelity.snippets * schedule.snippet_stride(fidelity) / schedule.fps
        assert span == pytest.approx(256 * 4 / 30)


def test_unknown_schedule_names_the_presets():
    with pytest.raises(ConfigError, match="unknown schedule 'lofi'.*lofi-anet"):
        load_schedule("lofi")


def test_yaml_schedule(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(
        "full: {name: full, snippets: 10, frames: 4, size: 64}\n"
        "train: [{name: low, snippets: 10, frames: 4, size: 32}]\ncycle: short\n"
    )
    schedule = load_schedule(str(path))
    assert schedule.name == "mine" and schedule.cycle == "short"
    assert schedule.fidelity("low").size == 32
    with pytest.raises(ConfigError, match="no fidelity 'x'"):
        schedule.fidelity("x")
