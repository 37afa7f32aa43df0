"""`lofipipe detect`: a head run's bundle on videos it has never seen as features, from
local storage and from S3, with bad videos beside good ones, and reruns."""

import csv
import json
import re
import shutil

import pytest
from click.testing import CliRunner
from support.browser import render
from support.cli import fresh_root, run

from lofipipe.cli import main
from lofipipe.data.annotations import AnnotationIndex
from lofipipe.evaluation.detection import Segment, evaluate, parse_thresholds
from lofipipe.evaluation.ground_truth import ground_truth
from lofipipe.layout import model_dir
from lofipipe.storage import Store

SMALL = [
    *("--set", "train.head.dim=32", "--set", "train.head.levels=3"),
    *("--set", "train.min_steps=0", "--set", "train.epochs=3", "--set", "train.lr=1e-3"),
]


@pytest.fixture(scope="module")
def trained(demo_shards, tmp_path_factory):
    """The demo ROOT with tiny's features and a head run `H` (its bundle), and the
    folder of the dataset's videos."""
    root = fresh_root(demo_shards, tmp_path_factory.mktemp("detect"))
    output = run("extract", root, "--encoder", "tiny", "--schedule", "demo")
    fingerprint = re.search(r"^features (\w+): ", output, re.M).group(1)
    run("train", root, "--features", fingerprint, "--run", "H", *SMALL)
    return root, demo_shards / "data" / "videos"


def _average_map(root, results, videos):
    annotations = AnnotationIndex(Store(str(root)))
    found = [
        Segment(video_id, item["label"], *item["segment"], item["score"])
        for video_id in videos
        for item in results.get(video_id, [])
    ]
    thresholds = parse_thresholds("0.5:0.95:0.05")
    return evaluate(ground_truth(annotations, videos), found, thresholds).average_mAP


def test_detect_scores_as_eval_does_on_the_same_videos(trained, tmp_path):
    root, videos = trained
    out = tmp_path / "found"
    output = run("detect", videos, "--model", root / model_dir("H"), "--out", out)
    assert re.search(r"^detect: 4 videos, \d+ detections, [\d.]+ videos/s", output, re.M)
    record = json.loads((out / "detections.json").read_text())
    assert sorted(record["results"]) == [f"synth_{i:04d}" for i in range(4)]
    # The run's predictions were made from the feature set; detect decodes the videos
    # and encodes them with the bundle's encoder: the same features, the same mAP.
    validation = AnnotationIndex(Store(str(root))).videos("validation")
    predictions = json.loads((root / "runs/H/predictions.json").read_text())["results"]
    expected = _average_map(root, predictions, validation)
    assert abs(_average_map(root, record["results"], validation) - expected) <= 0.01
    with open(out / "detections.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == sum(map(len, record["results"].values()))
    assert set(rows[0]) == {"video_id", "label", "start", "end", "score"}
    # The page in headless Chromium: a timeline per video, each detection shown (the top
    # 10) as a laid-out bar with its score beside it, a legend of every class, nothing
    # fetched, no script.
    seen = render(out / "detections.html", tmp_path / "detections.png")
    assert [t["video"] for t in seen["timelines"]] == sorted(record["results"])
    for timeline in seen["timelines"]:
        shown = record["results"][timeline["video"]][:10]
        assert timeline["labels"] == [d["label"] for d in shown]
        assert timeline["scores"] == len(shown) and all(w > 0 for w in timeline["bars"])
    labels = json.loads((root / model_dir("H") / "bundle.json").read_text())["labels"]
    assert seen["legend"] == len(labels)
    assert seen["fetched"] == [] and seen["scripts"] == 0
    assert not list((out / "features").rglob("*.parquet"))  # not kept unless asked
    # A rerun with the same videos and bundle redoes nothing; other filters redo it.
    again = run("detect", videos, "--model", root / model_dir("H"), "--out", out)
    assert "(all current: nothing redone)" in again
    fewer = run("detect", videos, "--model", root / model_dir("H"), "--out", out, "--top", 2)
    assert "nothing redone" not in fewer
    kept = json.loads((out / "detections.json").read_text())["results"]
    assert kept == {video: items[:2] for video, items in record["results"].items()}
    # A dataset's ROOT is not an --out: its manifest and annotations stay as they are.
    before = (root / "annotations.parquet").read_bytes()
    refused = CliRunner().invoke(
        main, ["detect", str(videos), "--model", str(root / model_dir("H")), "--out", str(root)]
    )
    assert refused.exit_code == 2 and "detect did not make" in refused.output
    assert (root / "annotations.parquet").read_bytes() == before


def test_bad_videos_beside_good_ones_and_a_single_file(trained, tmp_path):
    root, videos = trained
    mixed = tmp_path / "mixed"
    shutil.copytree(videos, mixed)
    good = (mixed / "synth_0001.mp4").read_bytes()
    (mixed / "broken.mp4").write_bytes(good[: len(good) // 3])  # cut off mid-file
    (mixed / "empty.mp4").write_bytes(b"")
    out = tmp_path / "found"
    output = run("detect", mixed, "--model", root / model_dir("H"), "--out", out)
    assert "detect: 4 videos" in output and "2 failed" in output
    record = json.loads((out / "detections.json").read_text())
    assert set(record["external_data"]["failed"]) == {"broken", "empty"}
    clean = tmp_path / "clean"
    run("detect", videos, "--model", root / model_dir("H"), "--out", clean)
    assert record["results"] == json.loads((clean / "detections.json").read_text())["results"]
    # A list of videos: a path per line, relative to the list or absolute.
    listing = tmp_path / "list.txt"
    listing.write_text(f"# two of them\nmixed/synth_0000.mp4\n\n{videos / 'synth_0003.mp4'}\n")
    listed = run("detect", listing, "--model", root / model_dir("H"), "--out", tmp_path / "l")
    assert "detect: 2 videos" in listed
    found = json.loads((tmp_path / "l/detections.json").read_text())["results"]
    assert found == {k: record["results"][k] for k in ("synth_0000", "synth_0003")}
    # One file: its top detections printed as a table.
    single = run(
        "detect",
        videos / "synth_0002.mp4",
        "--model",
        root / model_dir("H"),
        "--out",
        tmp_path / "one",
        "--top",
        "3",
    )
    assert re.search(r"^label\s+start\s+end\s+score$", single, re.M)
    assert (
        len(json.loads((tmp_path / "one/detections.json").read_text())["results"]["synth_0002"])
        <= 3
    )


def test_detect_from_s3_and_a_bundle_that_does_not_fit(trained, tmp_path, s3_bucket):
    root, videos = trained
    bucket, options = s3_bucket
    model = Store(f"s3://{bucket}/model", options)
    for path in sorted((root / model_dir("H")).iterdir()):
        model.write_bytes(path.name, path.read_bytes())
    remote_videos = Store(f"s3://{bucket}/videos", options)
    for path in sorted(videos.iterdir()):
        remote_videos.write_bytes(path.name, path.read_bytes())
    pairs = [f"--storage-option={k}={v}" for k, v in options.items()]
    out = f"s3://{bucket}/found"
    run("detect", remote_videos.url, "--model", model.url, "--out", out, *pairs)
    remote = json.loads(Store(out, options).read_text("detections.json"))
    local = tmp_path / "local"
    run("detect", videos, "--model", root / model_dir("H"), "--out", local)
    assert remote["results"] == json.loads((local / "detections.json").read_text())["results"]
    # A bundle whose head is not the recorded one is refused before any work.
    model.write_bytes("head.pt", (root / model_dir("H") / "encoder.pt").read_bytes())
    result = CliRunner().invoke(
        main, ["detect", str(videos), "--model", model.url, "--out", str(tmp_path / "x"), *pairs]
    )
    assert result.exit_code == 1, result.output  # a bad input, not a bad setting
    (line,) = result.output.strip().splitlines()
    assert "head.pt is not the file bundle.json records" in line
    assert not (tmp_path / "x").exists()
