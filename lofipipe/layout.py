"""Every path under ROOT, relative to it: the one place that names them.

manifest/videos.parquet                  one row per listed video
manifest/errors.parquet                  failed videos and annotation issues
manifest/ingest.yaml                     the resolved config of the last ingest
annotations.parquet                      normalized action segments
shards/materialize.yaml                  the resolved config of the last materialize
shards/schedule.json                     the schedule the shards were made for
shards/<fidelity>/part-NNNNN.parquet     snippets, + part-NNNNN.stats.json (commit marker)
features/<fingerprint>/lineage.json      what a feature set depends on
features/<fingerprint>/part-NNNNN.parquet  a row per video, + part-NNNNN.stats.json
runs/<run>/config.yaml                   the resolved config of a training run
runs/<run>/checkpoints/epoch-NNNN.pt     resumable state after each epoch
runs/<run>/metrics.parquet, predictions.json, evaluation.json, report.html, report.png
runs/<run>/encoder.pt                    the adapted encoder of a LoFi or LoSA run
runs/<run>/model/bundle.json, encoder.pt, head.pt  the model bundle of a head run (detect)
detections.json, detections.csv, detections.html  what `lofipipe detect` found (its --out)
_lofipipe/detect.json                    marks a ROOT as detect's --out
_lofipipe/stages/<time>-<id>.json        one record per stage invocation
_lofipipe/journal/materialize/part-NNNNN.json  the quarantine journal of a shard task
"""

from __future__ import annotations

MANIFEST_PATH = "manifest/videos.parquet"
ERRORS_PATH = "manifest/errors.parquet"
INGEST_CONFIG_PATH = "manifest/ingest.yaml"
ANNOTATIONS_PATH = "annotations.parquet"

SHARDS_DIR = "shards"
MATERIALIZE_CONFIG_PATH = "shards/materialize.yaml"
SCHEDULE_PATH = "shards/schedule.json"

FEATURES_DIR = "features"
RUNS_DIR = "runs"
LINEAGE_NAME = "lineage.json"

STAGES_DIR = "_lofipipe/stages"
JOURNAL_DIR = "_lofipipe/journal/materialize"

PART_PATTERN = "part-*"
STATS_SUFFIX = ".stats.json"
STATS_PATTERN = "part-*.stats.json"
JOURNAL_PATTERN = "part-*.json"
CHECKPOINT_PATTERN = "epoch-*.pt"
DETECT_MARKER = "_lofipipe/detect.json"
DETECTIONS_JSON, DETECTIONS_CSV, DETECTIONS_HTML = (
    "detections.json",
    "detections.csv",
    "detections.html",
)


def part_number(path: str) -> int:
    """N of a `.../part-NNNNN.<suffix>` path."""
    return int(path.rsplit("/", 1)[-1][len("part-") :][:5])


def stats_of(part: str) -> str:
    """The commit marker beside a part's Parquet file."""
    return part.replace(".parquet", STATS_SUFFIX)


def parquet_of(marker: str) -> str:
    """The Parquet file a commit marker stands for."""
    return marker.replace(STATS_SUFFIX, ".parquet")


def _part(number: int) -> str:
    return f"part-{number:05d}.parquet"


def shard_dir(fidelity: str) -> str:
    return f"{SHARDS_DIR}/{fidelity}"


def shard_path(fidelity: str, shard: int) -> str:
    return f"{shard_dir(fidelity)}/{_part(shard)}"


def shard_stats_path(fidelity: str, shard: int) -> str:
    return stats_of(shard_path(fidelity, shard))


def feature_dir(fingerprint: str) -> str:
    return f"{FEATURES_DIR}/{fingerprint}"


def lineage_path(fingerprint: str) -> str:
    return f"{feature_dir(fingerprint)}/{LINEAGE_NAME}"


def feature_part_path(fingerprint: str, part: int) -> str:
    return f"{feature_dir(fingerprint)}/{_part(part)}"


def feature_stats_path(fingerprint: str, part: int) -> str:
    return stats_of(feature_part_path(fingerprint, part))


def run_dir(run: str) -> str:
    return f"{RUNS_DIR}/{run}"


def run_config_path(run: str) -> str:
    return f"{run_dir(run)}/config.yaml"


def checkpoints_dir(run: str) -> str:
    return f"{run_dir(run)}/checkpoints"


def checkpoint_path(run: str, epoch: int) -> str:
    return f"{checkpoints_dir(run)}/epoch-{epoch:04d}.pt"


def checkpoint_epoch(path: str) -> int:
    """The epoch a checkpoint (`.../epoch-NNNN.pt`) was saved after."""
    return int(path.rsplit("-", 1)[1][:4])


def metrics_path(run: str) -> str:
    return f"{run_dir(run)}/metrics.parquet"


def predictions_path(run: str) -> str:
    return f"{run_dir(run)}/predictions.json"


def evaluation_path(run: str) -> str:
    return f"{run_dir(run)}/evaluation.json"


def report_path(run: str) -> str:
    """The run's page, `report.html`."""
    return f"{run_dir(run)}/report.html"


def report_plot_path(run: str) -> str:
    return f"{run_dir(run)}/report.png"


def encoder_path(run: str) -> str:
    """The adapted encoder a LoFi or LoSA run leaves for `extract --checkpoint`."""
    return f"{run_dir(run)}/encoder.pt"


def model_dir(run: str) -> str:
    """A head run's model bundle: everything `detect` needs (models/bundle.py)."""
    return f"{run_dir(run)}/model"


def journal_path(shard: int) -> str:
    return f"{JOURNAL_DIR}/part-{shard:05d}.json"
