"""The run report page (`runs/<run>/report.html`) rendered in headless Chromium: every
figure decoded, every table filled from ROOT, nothing fetched, names escaped."""

import json
import shutil

import pytest
from support.browser import render
from support.cli import SHARDS, run

from lofipipe.data.annotations import AnnotationIndex
from lofipipe.data.stage_log import record_stage, stage_totals
from lofipipe.evaluation.detection import Segment, evaluate, parse_thresholds
from lofipipe.evaluation.ground_truth import ground_truth
from lofipipe.reports.run_page import collect_errors, write_run_page
from lofipipe.schemas.config import config_to_yaml, load_config
from lofipipe.schemas.tables import METRICS
from lofipipe.storage import Store

BROKEN = "broken <img src=x onerror=alert(1)> clip.mp4"  # a legal file name, and markup


def _write_run(root: Store, run: str, epochs: int = 3, steps_per_epoch: int = 4) -> dict:
    """A LoFi run's files as training leaves them: config, metrics, evaluation."""
    config = load_config(
        None,
        [
            "materialize.schedule=demo",
            "train.mode=lofi",
            f"train.run={run}",
            f"train.epochs={epochs}",
        ],
    )
    root.write_text(f"runs/{run}/config.yaml", config_to_yaml(config, "lofipipe test"))
    annotations = AnnotationIndex(root)
    truth = ground_truth(annotations, annotations.videos("validation"))
    found = [Segment(s.video_id, s.label, s.start + 0.3, s.end, 0.9) for s in truth]
    result = evaluate(truth, found, parse_thresholds("0.5:0.95:0.05"))
    root.write_text(f"runs/{run}/evaluation.json", json.dumps(result.to_dict()))
    predictions = {}
    for s in found:
        predictions.setdefault(s.video_id, []).append(
            {"segment": [s.start, s.end], "label": s.label, "score": s.score}
        )
    root.write_text(f"runs/{run}/predictions.json", json.dumps({"results": predictions}))
    rows, step = [], 0
    for epoch in range(1, epochs + 1):
        for _ in range(steps_per_epoch):
            step += 1
            rows.append(
                {
                    "kind": "step",
                    "epoch": epoch,
                    "step": step,
                    "loss": 2.0 / step,
                    "cls_loss": 1.2 / step,
                    "reg_loss": 0.8 / step,
                    "lr": 1e-4 * epoch,
                    "seconds": 0.1,
                }
            )
        rows.append(
            {
                "kind": "epoch",
                "epoch": epoch,
                "step": step,
                "loss": 2.0 / step,
                "cls_loss": 1.2 / step,
                "reg_loss": 0.8 / step,
                "lr": 1e-4 * epoch,
                "val_average_map": result.average_mAP * epoch / epochs,
                "val_map": [float(v) * epoch / epochs for v in result.mAP],
                "seconds": 0.4,
            }
        )
    root.write_table(f"runs/{run}/metrics.parquet", METRICS.from_rows(rows))
    return result.to_dict()


@pytest.fixture
def root_with_a_failure(demo_shards, tmp_path):
    """The demo root re-ingested with one undecodable file beside its good videos, then
    materialized: a probe failure to report."""
    shutil.copytree(demo_shards / "data", tmp_path / "data")
    (tmp_path / "data/videos" / BROKEN).write_bytes(b"\x00not a video" * 64)
    shutil.copytree(demo_shards / "root", tmp_path / "root")
    run(
        "ingest",
        tmp_path / "root",
        "--videos",
        tmp_path / "data/videos",
        "--annotations",
        tmp_path / "data/annotations.json",
    )
    run("materialize", tmp_path / "root", "--schedule", "demo", *SHARDS)
    return tmp_path / "root"


def test_report_page_renders_every_figure_and_table(root_with_a_failure, tmp_path):
    root = Store(str(root_with_a_failure))
    evaluation = _write_run(root, "page")
    url = write_run_page(root, "page")
    assert url == root.url_of("runs/page/report.html")
    seen = render(root_with_a_failure / "runs/page/report.html", tmp_path / "page.png")

    assert seen["title"] == "lofipipe run page"
    assert seen["sections"] == [
        *("training", "scores", "timelines", "throughput", "errors", "snippets", "config")
    ]
    for name in (
        "figure-training",
        "figure-map-per-tiou",
        "figure-ap-per-class",
        "figure-contact-sheet",
    ):
        figure = seen["figures"][name]
        assert figure["complete"] and figure["width"] > 100 and figure["height"] > 50, name
        assert figure["shown"] > 100, name  # laid out on the page, not hidden
    assert seen["fetched"] == [] and seen["scripts"] == 0  # self-contained

    [per_tiou] = seen["tables"]["map-per-tiou"]
    assert per_tiou[0] == "mAP (%)" and len(per_tiou) == 1 + 10 + 1
    assert per_tiou[1] == f"{100 * evaluation['mAP']['0.50']:.2f}"
    assert per_tiou[-1] == f"{100 * evaluation['average_mAP']:.2f}"
    per_class = seen["tables"]["ap-per-class"]
    assert [row[0] for row in per_class] == sorted(evaluation["per_class"])
    throughput = {row[0]: row for row in seen["tables"]["stage-throughput"]}
    assert set(throughput) == {"ingest", "materialize"}
    ingest = throughput["ingest"]
    # The fixture's ingest probed 4 videos; here they moved, so 4 more and the broken one.
    assert ingest[1:3] == ["2", "8"] and ingest[4] == "1"
    assert float(ingest[6]) > 0
    materialize = throughput["materialize"]
    assert materialize[1:3] == ["1", "4"] and int(materialize[3]) > 0 and float(materialize[7]) > 0
    errors = seen["tables"]["errors"]
    [(stage, video, error)] = errors
    assert stage == "ingest" and video.startswith("broken_img_src_x_onerror")
    assert error.startswith("not_a_video") or error.startswith("decode_error"), error
    assert seen["images"] == 4  # the name's markup shows as text, never as an element
    assert "mode: lofi" in seen["config"] and "schedule: demo" in seen["config"]
    # Per validation video, its ground truth and its predictions on one time axis: a bar
    # each, laid out, in its class's colour, the predictions with their scores beside.
    annotations = AnnotationIndex(root)
    validation = annotations.videos("validation")
    assert [t["video"] for t in seen["timelines"]] == validation
    for timeline in seen["timelines"]:
        actions = len(annotations.segments(timeline["video"])[0])
        assert len(timeline["bars"]) == 2 * actions and min(timeline["bars"]) > 1
        assert timeline["scores"] == actions
    assert seen["legend"] == len(annotations.label_names)


def test_stage_records_add_up_over_invocations(tmp_path):
    root = Store(str(tmp_path))
    record_stage(root, "extract", 2.0, videos=3, snippets=90)
    record_stage(root, "extract", 1.0, videos=1, snippets=30, failed=1)
    record_stage(root, "extract", 5.0, videos=0)  # a rerun with nothing to do: no record
    [extract] = stage_totals(root)
    assert (extract.invocations, extract.videos, extract.snippets, extract.failed) == (2, 4, 120, 1)
    assert extract.seconds == 3.0 and extract.rate(extract.snippets) == 40.0


def test_errors_are_listed_once_per_video_and_stage(root_with_a_failure):
    errors = collect_errors(Store(str(root_with_a_failure)))
    assert len(errors) == len(set(errors)) == 1
    assert errors[0][0] == "ingest" and errors[0][1].startswith("broken_img")
