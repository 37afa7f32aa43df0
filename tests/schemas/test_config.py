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
