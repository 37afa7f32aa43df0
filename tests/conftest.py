"""Shared fixtures: a local Ray for the session, moto's S3 server on 127.0.0.1, tiny videos."""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

# Nothing in the tests may reach beyond this machine: no instance metadata look-ups, no
# default AWS endpoints. Every S3 client gets the local server's URL explicitly.
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "RAY_ADDRESS"):
    os.environ.pop(name, None)
os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def pytest_sessionfinish(session, exitstatus):
    """`make reliability`: the outcomes the reliability tests recorded, as a table (only
    when every test passed: a failed one records nothing)."""
    target = os.environ.get("LOFIPIPE_RELIABILITY_DOC")
    if target and exitstatus == 0:
        from support.reliability import RECORDED, write_table

        if RECORDED:
            write_table(Path(target))


S3_KEY = "lofipipe-test-key"
S3_SECRET = "lofipipe-test-secret-5b1f0c"


@pytest.fixture(scope="session")
def ray_local():
    """A 2-CPU local Ray shared by every test that needs one."""
    import ray

    # address "local": a Ray of the tests' own, never a `ray start` cluster on the machine
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield
    ray.shutdown()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _MotoServer:
    """moto's S3 server on 127.0.0.1, which a test may stop for a while: moto keeps the
    buckets in this process, so the server started again on the same port serves them."""

    def __init__(self):
        self.port = _free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.server = self._start()

    def _start(self):
        from moto.server import ThreadedMotoServer

        server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        server.start()
        return server

    def outage(self, seconds: float) -> threading.Thread:
        """Stops the server now and starts it again after `seconds`, in the background."""
        self.server.stop()

        def back() -> None:
            time.sleep(seconds)
            self.server = self._start()

        thread = threading.Thread(target=back, daemon=True)
        thread.start()
        return thread


_SERVER: list[_MotoServer] = []


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server, listening on 127.0.0.1; yields its endpoint URL."""
    _SERVER.append(_MotoServer())
    yield _SERVER[0].endpoint
    _SERVER[0].server.stop()


@pytest.fixture
def s3_outage(s3_server):
    """`outage(seconds)`: the session's S3 server down for that long, from now."""
    return _SERVER[0].outage


@pytest.fixture
def s3_bucket(s3_server):
    """A fresh bucket; yields (bucket name, storage options for s3fs)."""
    import boto3

    name = f"test-{uuid.uuid4().hex[:12]}"
    client = boto3.client(
        "s3",
        endpoint_url=s3_server,
        aws_access_key_id=S3_KEY,
        aws_secret_access_key=S3_SECRET,
        region_name="us-east-1",
    )
    client.create_bucket(Bucket=name)
    options = {"endpoint_url": s3_server, "key": S3_KEY, "secret": S3_SECRET}
    yield name, options


@pytest.fixture(scope="session")
def small_video(tmp_path_factory) -> Path:
    from support.media import write_video

    return write_video(tmp_path_factory.mktemp("media") / "small.mp4")


@pytest.fixture(scope="session")
def demo_shards(tmp_path_factory, ray_local) -> Path:
    """`base/root`: 4 small synthetic videos ingested and materialized with the demo
    schedule, 2 per shard; copy it (cli_helpers.fresh_root) before changing it."""
    from support.cli import SHARDS, run, synth_and_ingest

    base = tmp_path_factory.mktemp("demo-shards")
    synth_and_ingest(base, 4)
    run("materialize", base / "root", "--schedule", "demo", *SHARDS)
    return base
