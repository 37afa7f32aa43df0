import pytest
from support.reliability import record

from lofipipe.errors import ConfigError
from lofipipe.schemas.config import (
    Config,
    IngestConfig,
    config_to_yaml,
    load_config,
)


def test_defaults_come_from_the_dataclasses():
    config = load_config()
    assert config == Config()
    assert config.ingest.probe_timeout_s == IngestConfig().probe_timeout_s


def test_yaml_then_overrides_in_order(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("synth:\n  videos: 5\n  seed: 3\ningest:\n  extensions: [mp4]\n")
    config = load_config(str(path), ["synth.videos=7", "ray.num_cpus=1"])
    assert config.synth.videos == 7 and config.synth.seed == 3
    assert config.ingest.extensions == ("mp4",)
    assert config.ray.num_cpus == 1


def test_config_is_frozen():
    with pytest.raises(AttributeError):
        load_config().synth.videos = 3


@pytest.mark.parametrize(
    "override, message",
    [
        ("synth.vidoes=3", r"synth\.vidoes: unknown key"),
        ("nope.x=1", r"nope: unknown key"),
        ("synth.videos=many", r"synth\.videos: expected an integer, got 'many'"),
        ("synth.videos=0", r"synth\.videos: must be at least 1"),
        ("synth.classes=99", r"synth\.classes: must be between 1 and 8"),
        ("ingest.probe_timeout_s=-1", r"ingest\.probe_timeout_s: must be > 0"),
        ("ingest.extensions=mp4", r"ingest\.extensions: expected a list"),
        ("synth.actions_per_video=[1, 2, 3]", r"synth\.actions_per_video: expected 2 items"),
        ("synth.seconds=5", r"synth\.seconds: must be at least"),
        ("ray.num_cpus=true", r"ray\.num_cpus: expected"),
        ("synth=3", r"synth: expected a mapping"),
        ("novalue", r"must look like key=value"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_bad_yaml_files(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("synth: [unclosed\n")
    with pytest.raises(ConfigError, match=r"broken.yaml line \d+: not valid YAML"):
        load_config(str(broken))
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(str(listing))
    with pytest.raises(ConfigError, match="file not found"):
        load_config(str(tmp_path / "missing.yaml"))


@pytest.mark.reliability
def test_yaml_is_loaded_safely(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text(f"synth: !!python/object/apply:os.system ['touch {tmp_path}/pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML") as caught:
        load_config(str(path))
    assert not (tmp_path / "pwned").exists()
    record(
        "input",
        "YAML config with a python/object tag (code execution)",
        f"safe loader refuses it: `{str(caught.value)[:80]}...`",
        "test_config",
    )


def test_resolved_config_round_trips(tmp_path):
    config = load_config(None, ["synth.videos=9", "ingest.extensions=[mp4, mkv]"])
    text = config_to_yaml(config, "lofipipe synth out --videos 9")
    assert text.startswith("# Resolved by: lofipipe synth out --videos 9\n")
    path = tmp_path / "resolved.yaml"
    path.write_text(text)
    assert load_config(str(path)) == config


@pytest.mark.parametrize(
    "text, expected", [("1e-4", 1e-4), ("1E-4", 1e-4), ("3e5", 3e5), (".5", 0.5), ("+2e-3", 2e-3)]
)
def test_numbers_in_overrides_are_numbers(text, expected):
    """YAML 1.1 (PyYAML) reads 1e-4 as a string; a float field takes it as a number."""
    assert load_config(None, [f"train.weight_decay={text}"]).train.weight_decay == pytest.approx(
        expected
    )


def test_numbers_in_yaml_files_are_numbers(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 1e-4\n  epochs: 3e1\n  warmup_epochs: .5\n")
    train = load_config(str(path)).train
    assert train.lr == pytest.approx(1e-4) and train.warmup_epochs == 0.5
    assert train.epochs == 30 and isinstance(train.epochs, int)


def test_negative_exponents_and_signs_parse():
    with pytest.raises(ConfigError, match="train.lr: must be positive"):  # -2e-3 read as -0.002
        load_config(None, ["train.lr=-2e-3"])
    assert load_config(None, ["train.lr=1e-4"]).train.lr == pytest.approx(1e-4)


def test_integers_only_when_integral_and_strings_stay_strings():
    assert load_config(None, ["train.epochs=1e1"]).train.epochs == 10
    with pytest.raises(ConfigError, match="train.epochs: expected an integer, got '1.5e0'"):
        load_config(None, ["train.epochs=1.5e0"])
    with pytest.raises(ConfigError, match="train.lr: expected a number, got 'fast'"):
        load_config(None, ["train.lr=fast"])
    assert load_config(None, ["train.run=1e4"]).train.run == "1e4"  # a str field
    with pytest.raises(ConfigError, match="expected a number, got 'nan'"):
        load_config(None, ["train.lr=nan"])


def test_a_schedule_file_takes_numbers_too(tmp_path):
    from lofipipe.schemas.schedule import load_schedule

    path = tmp_path / "s.yaml"
    path.write_text(
        "full: {name: full, snippets: 8, frames: 2, size: 32}\n"
        "train: [{name: half, snippets: 4, frames: 2, size: 32}]\n"
        "sampling: stride\nfps: 3e1\nstride: 4e0\n"
    )
    schedule = load_schedule(str(path))
    assert schedule.fps == 30.0 and schedule.stride == 4


def test_preprocess_is_auto_or_a_preset():
    assert load_config().materialize.preprocess == "auto"
    assert load_config(None, ["materialize.preprocess=tsm-test"]).materialize.preprocess == (
        "tsm-test"
    )
    with pytest.raises(ConfigError, match="materialize.preprocess: must be auto or a preset"):
        load_config(None, ["materialize.preprocess=bicubic"])
