"""Bad inputs through the whole graph (`lofipipe run`, head recipe): each gets a one-line
reason, `--strict` turns any failure into exit code 3, nothing is written outside ROOT,
and every good video's outputs are those of a clean run without the bad inputs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from support.cli import small_synth
from support.job_outputs import differences, job_outputs, row_changes
from support.media import write_audio_only, write_timed_video, write_truncated, write_video
from support.reliability import record

from lofipipe.cli import main
from lofipipe.data.video_ids import video_id_for_file
from lofipipe.storage import Store

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.reliability]

RECIPE = """\
# lofipipe run --config recipe.yaml
job:
  root: {root}
  videos: {videos}
  annotations: {annotations}
  recipe: head
materialize:
  schedule: demo
  videos_per_shard: 4
extract:
  encoder: tiny
train:
  run: h
  epochs: 3
  batch_size: 2
  warmup_epochs: 1
  min_steps: 0
  head:
    dim: 32
    levels: 3
"""

# Valid videos with awkward properties or names: processed in both runs.
AWKWARD = {
    "variable frame rate": "vfr.mp4",
    "rotation 90": "rot90.mp4",
    "rotation 180": "rot180.mp4",
    "rotation 270": "rot270.mp4",
    "1x1 pixels": "one pixel.mp4",
    "stream without a frame count (Matroska)": "no count.mkv",
    "shorter than one snippet (0.3 s)": "short.mp4",
    "a 10-hour video (1 fps, 16x16)": "ten hours.mp4",
    "unicode name with spaces": "été 名前 (1).mp4",
    "shell metacharacters in the name": "$(touch pwned); `id`.mp4",
    "a name of dots (path traversal)": "...mp4",
}
# Files that cannot be used: each fails its probe with this reason.
BROKEN = {
    "truncated file": ("truncated.mp4", "not_a_video"),
    "zero-byte file": ("empty.mp4", "empty_file"),
    "random bytes named .mp4": ("random.mp4", "not_a_video"),
    "a text file named .mp4": ("notes.mp4", "not_a_video"),
    "audio only": ("podcast.mp4", "no_video_stream"),
    "8K frames (over the pixel budget)": ("huge 8k.mp4", "too_many_pixels"),
}
# Annotation entries that do not fit: each is an issue, left out.
BAD_ENTRIES = {
    "annotation id with path traversal": ("../../../outside", [1.0, 2.0], "swing", "unknown_video"),
    "label not in the taxonomy": ("synth_0000", [1.0, 2.0], "ghost", "unknown_label"),
    "segment reversed": ("synth_0000", [5.0, 2.0], "swing", "reversed_segment"),
    "segment outside the video": ("synth_0000", [50.0, 60.0], "swing", "outside_video"),
}


def _write_awkward(videos: Path) -> None:
    write_timed_video(
        videos / AWKWARD["variable frame rate"],
        [0.0, 0.1, 0.15, 0.6, 0.65, 0.7, 1.4, 2.0, 2.05, 2.9],
    )
    for degrees in (90, 180, 270):
        write_video(videos / f"rot{degrees}.mp4", rotation=degrees)
    write_video(videos / AWKWARD["1x1 pixels"], size=(1, 1), pix_fmt="yuv444p")
    write_video(videos / AWKWARD["stream without a frame count (Matroska)"])
    write_video(videos / AWKWARD["shorter than one snippet (0.3 s)"], seconds=0.3)
    write_video(
        videos / AWKWARD["a 10-hour video (1 fps, 16x16)"], seconds=36000, size=(16, 16), fps=1
    )
    for case in (
        "unicode name with spaces",
        "shell metacharacters in the name",
        "a name of dots (path traversal)",
    ):
        write_video(videos / AWKWARD[case])


def _write_broken(videos: Path) -> None:
    write_truncated(videos / "truncated.mp4", videos / "synth_0001.mp4")
    (videos / "empty.mp4").write_bytes(b"")
    (videos / "random.mp4").write_bytes(os.urandom(50_000))
    (videos / "notes.mp4").write_text("not a video\n" * 100)
    write_audio_only(videos / "podcast.mp4")
    write_video(videos / "huge 8k.mp4", seconds=0.2, size=(7680, 4320), fps=5)


def _run(recipe: Path, *extra: str):
    return CliRunner().invoke(main, ["run", "--config", str(recipe), *extra])


@pytest.fixture(scope="module")
def both_runs(tmp_path_factory, ray_local):
    """(clean ROOT, ROOT with the bad inputs, the bad run's strict result, work folder)."""
    base = tmp_path_factory.mktemp("bad-inputs")
    result = CliRunner().invoke(main, ["synth", str(base / "data"), *small_synth(6)])
    assert result.exit_code == 0, result.output
    videos = base / "data/videos"
    _write_awkward(videos)
    clean = base / "clean"
    recipes = {}
    for name, truth_file in (
        ("clean", base / "data/annotations.json"),
        ("bad", base / "data/annotations-bad.json"),
    ):
        recipes[name] = base / f"{name}.yaml"
        recipes[name].write_text(
            RECIPE.format(root=base / name, videos=videos, annotations=truth_file)
        )
    result = _run(recipes["clean"])
    assert result.exit_code == 0, result.output

    _write_broken(videos)
    truth = json.loads((base / "data/annotations.json").read_text())
    for key, segment, label, _ in BAD_ENTRIES.values():
        entry = truth["database"].setdefault(
            key, {"subset": "training", "duration": 10.0, "annotations": []}
        )
        entry["annotations"].append({"segment": segment, "label": label})
    (base / "data/annotations-bad.json").write_text(json.dumps(truth))
    before = {p for p in base.rglob("*") if not p.is_relative_to(base / "bad")}
    strict = _run(recipes["bad"], "--strict")
    after = {p for p in base.rglob("*") if not p.is_relative_to(base / "bad")}
    assert after == before  # nothing written outside ROOT, whatever the names
    return clean, base / "bad", strict, recipes["bad"]


def test_each_bad_input_has_its_reason_and_strict_exits_3(both_runs):
    _, bad, strict, _ = both_runs
    assert strict.exit_code == 3, strict.output
    assert f"error: --strict: {len(BROKEN)} failed videos" in strict.output
    assert f"status: {6 + len(AWKWARD)} ok, {len(BROKEN)} failed" in strict.output
    manifest = {
        r["video_id"]: r for r in pq.read_table(bad / "manifest/videos.parquet").to_pylist()
    }
    for case, (name, reason) in BROKEN.items():
        row = manifest[video_id_for_file(name)]
        assert row["status"] == "failed" and row["error"].startswith(f"{reason}: "), row
        assert "\n" not in row["error"]
        record("input", case, f"probe: `{row['error']}`", "test_bad_inputs")
    issues = pq.read_table(bad / "manifest/errors.parquet").to_pylist()
    for case, (key, _, _, reason) in BAD_ENTRIES.items():
        [issue] = [i for i in issues if i["reason"] == reason]
        assert key in issue["error"] and "\n" not in issue["error"]
        record("input", case, f"annotations issue, left out: `{issue['error']}`", "test_bad_inputs")
    for case, name in AWKWARD.items():
        row = manifest[video_id_for_file(name)]
        assert row["status"] == "ok", row
        assert Path(name).stem == row["video_id"] or "/" not in row["video_id"]
        record("input", case, f"processed as id `{row['video_id']}`", "test_bad_inputs")
    rotations = {manifest[f"rot{d}"]["rotation"] for d in (90, 180, 270)}
    assert rotations == {90, 180, 270}
    assert manifest[video_id_for_file(AWKWARD["a 10-hour video (1 fps, 16x16)"])][
        "duration"
    ] == pytest.approx(36000, abs=2)


def test_good_videos_match_the_clean_run(both_runs):
    clean, bad, _, recipe = both_runs
    again = _run(recipe)  # without --strict: exit 0, and nothing is redone
    assert again.exit_code == 0, again.output
    first, second = job_outputs(Store(str(clean))), job_outputs(Store(str(bad)))
    manifests = "manifest/videos.parquet", "manifest/errors.parquet"
    assert (
        differences(
            {k: v for k, v in first.items() if k not in manifests},
            {k: v for k, v in second.items() if k not in manifests},
        )
        == []
    )
    good = {r["video_id"]: r for r in first["manifest/videos.parquet"]}
    found = {r["video_id"]: r for r in second["manifest/videos.parquet"] if r["video_id"] in good}
    assert found == good
    lost, duplicated = row_changes({k: v for k, v in first.items() if k not in manifests}, second)
    assert lost == duplicated == 0
    record(
        "input",
        "all of the above in one dataset",
        f"{len(good)} good videos: manifest rows, shards, features, training run and "
        f"evaluation identical to the clean run's",
        "test_bad_inputs",
        lost,
        duplicated,
    )


def test_malformed_files_stop_before_any_work(tmp_path):
    """Malformed recipe YAML, annotations JSON and CSV, and an impossible schedule: one
    `error:` line, exit code 1 or 2, and ROOT untouched."""
    videos = tmp_path / "videos"
    write_video(videos / "a.mp4")
    good = tmp_path / "annotations.json"
    good.write_text(json.dumps({"database": {}}))
    cases = {
        "malformed recipe YAML": ("recipe.yaml", "job: [unclosed\n", None),
        "malformed annotations JSON": ("annotations.json", '{"database": {', "annotations"),
        "annotations as CSV": (
            "annotations.csv",
            "video,label,start,end\na,x,1,2\n",
            "annotations",
        ),
        "schedule with impossible values": (
            "schedule.yaml",
            "name: bad\nsampling: stride\nfps: 10\nstride: 4\n"
            "full: {name: full, snippets: 0}\ntrain: [{name: a, snippets: 2}]\n",
            "schedule",
        ),
    }
    for case, (name, text, role) in cases.items():
        path = tmp_path / name
        path.write_text(text)
        recipe = path
        if role is not None:
            recipe = tmp_path / f"recipe-{name}"
            recipe.write_text(
                RECIPE.format(
                    root=tmp_path / "root",
                    videos=videos,
                    annotations=path if role == "annotations" else good,
                ).replace(
                    "schedule: demo",
                    f"schedule: {path}" if role == "schedule" else "schedule: demo",
                )
            )
        result = _run(recipe)
        assert result.exit_code in (1, 2), (case, result.output)
        message = [line for line in result.output.splitlines() if line.startswith("error:")]
        assert len(message) == 1, (case, result.output)
        assert not (tmp_path / "root").exists(), case
        record("input", case, f"exit {result.exit_code}: `{message[0]}`", "test_bad_inputs")
