"""`lofipipe run` as a user runs it on a cluster: drivers in their own processes against a
real Ray cluster on this machine, with ROOT and the videos on S3 (moto's server).

- A driver killed with SIGKILL during materialize, then during extract, then during
  training, and rerun each time, ends with the outputs of an uninterrupted run.
- On two nodes (a head and a worker node, one CPU each), with the S3 server down for 4 s
  in the middle of the job, the work runs on both nodes, the job rides out the outage, and
  the outputs equal the single-node run's.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import S3_KEY, S3_SECRET
from support.cluster import driver, node_ids, ray_cluster
from support.faults import kill_when
from support.job_outputs import differences, job_outputs, row_changes
from support.reliability import record

from lofipipe.cli import main
from lofipipe.storage import Store

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.s3, pytest.mark.reliability]

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": S3_KEY,
    "AWS_SECRET_ACCESS_KEY": S3_SECRET,
    "AWS_DEFAULT_REGION": "us-east-1",
}
RECIPE = """\
# lofipipe run --config recipe.yaml (the tests' small LoFi job)
job:
  root: s3://{bucket}/{root}
  videos: s3://{bucket}/data/videos
  annotations: s3://{bucket}/data/annotations.json
  recipe: lofi
materialize:
  schedule: demo
  videos_per_shard: 2
extract:
  encoder: tiny
train:
  run: k
  encoder: tiny
  workers: 2
  epochs: 2
  encoder_epochs: 2
  batch_size: 2
  warmup_epochs: 1
  min_steps: 0
  head:
    dim: 32
    levels: 3
"""


class Job:
    """The small LoFi job on one bucket: writes recipe files and runs drivers."""

    def __init__(self, bucket: str, endpoint: str, folder):
        self.bucket, self.endpoint, self.folder = bucket, endpoint, folder

    def store(self, root: str) -> Store:
        return Store(
            f"s3://{self.bucket}/{root}",
            {"endpoint_url": self.endpoint, "key": S3_KEY, "secret": S3_SECRET},
        )

    def recipe(self, root: str) -> list[str]:
        """`run --config RECIPE` and the storage options of the job on `root`."""
        recipe = self.folder / f"{root}.yaml"
        recipe.write_text(RECIPE.format(bucket=self.bucket, root=root))
        # The secret also travels as a storage option (inside Ray task arguments), the way
        # that could leak into saved configs, reports or errors: the clean run checks it.
        return [
            "run",
            "--config",
            str(recipe),
            "--storage-option",
            f"endpoint_url={self.endpoint}",
            "--storage-option",
            f"secret={S3_SECRET}",
            "--storage-option",
            f"key={S3_KEY}",
        ]

    def start(self, root: str, cluster, *extra: str):
        return driver([*self.recipe(root), "--address", cluster.address, *extra], CREDENTIALS)

    def plan(self, root: str) -> dict[str, str]:
        """`lofipipe run --dry-run` (which reads ROOT and needs no Ray): each step's state."""
        result = CliRunner().invoke(main, [*self.recipe(root), "--dry-run"])
        assert result.exit_code == 0, result.output
        return {
            m[1]: m[2]
            for m in re.finditer(
                r"^(\S.*?) {2,}(done|pending|partly done)\b", result.output, re.MULTILINE
            )
        }

    def run(self, root: str, cluster, *extra: str) -> str:
        """Runs the job to the end; returns its output (stdout and stderr)."""
        process = self.start(root, cluster, *extra)
        out, err = process.communicate(timeout=600)
        assert process.returncode == 0, err[-3000:]
        return out + err


@pytest.fixture(scope="module")
def job(s3_server, tmp_path_factory):
    import boto3

    bucket = "lofipipe-cluster"
    boto3.client(
        "s3",
        endpoint_url=s3_server,
        aws_access_key_id=S3_KEY,
        aws_secret_access_key=S3_SECRET,
        region_name="us-east-1",
    ).create_bucket(Bucket=bucket)
    process = driver(
        [
            "synth",
            f"s3://{bucket}/data",
            "--videos",
            "8",
            "--seconds",
            "10",
            "--size",
            "64x48",
            "--fps",
            "10",
            "--set",
            "synth.actions_per_video=[1, 2]",
            "--set",
            "synth.action_seconds=[1.5, 3]",
            "--storage-option",
            f"endpoint_url={s3_server}",
        ],
        CREDENTIALS,
    )
    _, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    return Job(bucket, s3_server, tmp_path_factory.mktemp("recipes"))


@pytest.fixture(scope="module")
def single_node(job):
    with ray_cluster([2], CREDENTIALS) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def clean_run(job, single_node):
    """The outputs of the uninterrupted run on one node."""
    out = job.run("clean", single_node)
    assert "== evaluate k-head" in out
    _assert_no_secret(job.store("clean"), out, single_node)
    return job_outputs(job.store("clean"))


def _assert_no_secret(store: Store, output: str, cluster) -> None:
    """The storage secret appears nowhere: not in anything written under ROOT (configs,
    stats, checkpoints, reports), not in the driver's output, not in Ray's logs."""
    assert S3_SECRET not in output
    written = store.list("", recursive=True)
    assert "runs/k-head/report.html" in written and "runs/k-head/config.yaml" in written
    for path in written:
        assert S3_SECRET.encode() not in store.read_bytes(path), path
    logs = Path(cluster.head_node.get_session_dir_path()) / "logs"
    files = [path for path in logs.rglob("*") if path.is_file()]
    assert files
    for path in files:
        assert S3_SECRET.encode() not in path.read_bytes(), path
    record(
        "fault",
        "storage secret planted in --storage-option and the environment",
        f"absent from {len(written)} files under ROOT, the driver's output and "
        f"{len(files)} Ray log files",
        "test_job_cluster",
    )


def _committed(store: Store, folder: str) -> int:
    return len(store.list(folder, pattern="part-*.stats.json", recursive=True))


def test_killed_driver_reruns_to_the_clean_outputs(job, single_node, clean_run):
    store = job.store("killed")
    shards = sum(path.startswith("shards/") and path.endswith(".stats.json") for path in clean_run)
    points = [
        ("materialize", lambda: _committed(store, "shards") >= 1),
        ("extract", lambda: _committed(store, "features") >= 1),
        ("train k-lofi", lambda: store.exists("runs/k-lofi/checkpoints/epoch-0001.pt")),
    ]
    for step, reached in points:
        process = job.start("killed", single_node)
        assert kill_when(process, reached), f"the job finished before {step} was reached"
        plan = job.plan("killed")
        assert plan[step] != "done", (step, plan)  # killed in the middle of that step
        if step == "materialize":
            assert _committed(store, "shards") < shards
    out = job.run("killed", single_node)
    assert "resumed after epoch" in out  # training continued from its checkpoint
    assert differences(clean_run, job_outputs(store)) == []
    lost, duplicated = row_changes(clean_run, job_outputs(store))
    for step, _ in points:
        record(
            "fault",
            f"driver killed (SIGKILL) during {step}, rerun",
            "the rerun continued; final ROOT equal to an uninterrupted run's",
            "test_job_cluster",
            lost,
            duplicated,
        )
    assert set(job.plan("killed").values()) == {"done"}


def test_two_nodes_share_the_work_and_ride_out_an_s3_outage(job, clean_run, s3_outage):
    """The S3 server stops for 4 s once the first shard is committed, then comes back with
    its objects: the job on two nodes rides it out and ends with the clean run's outputs,
    with shards and feature parts written on both nodes."""
    store = job.store("two-nodes")
    with ray_cluster([1, 1], CREDENTIALS) as cluster:
        process = job.start("two-nodes", cluster)
        restarts = []
        assert kill_when(
            process,
            lambda: _committed(store, "shards") >= 1,
            kill=lambda: restarts.append(s3_outage(4.0)),
        )
        out, err = process.communicate(timeout=600)
        assert process.returncode == 0, err[-3000:]
        nodes = node_ids(cluster)
    restarts[0].join()
    outputs = job_outputs(store)
    assert differences(clean_run, outputs) == []
    lost, duplicated = row_changes(clean_run, outputs)
    record(
        "fault",
        "S3 server stopped for 4 s during the job's writes, then restarted",
        "the job finished on its own (storage retries); ROOT equal to a clean run's",
        "test_job_cluster",
        lost,
        duplicated,
    )
    for folder in ("shards", "features"):
        used = {
            json.loads(store.read_text(path))["node"]
            for path in store.list(folder, pattern="part-*.stats.json", recursive=True)
        }
        assert used == nodes, f"{folder}: written on {len(used)} of the {len(nodes)} nodes"
