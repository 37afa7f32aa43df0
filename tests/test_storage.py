import os

import pyarrow as pa
import pytest
import s3fs
from support.reliability import record

from lofipipe.errors import StorageError
from lofipipe.storage import (
    REDACTED,
    Store,
    is_transient,
    list_files,
    parse_storage_options,
    redact,
)


class Boom(Exception):
    pass


def _write_then_fail(store: Store, name: str) -> None:
    with pytest.raises(Boom):
        with store.writer(name) as handle:
            handle.write(b"half of it")
            raise Boom()


def test_local_write_commits_whole_file(tmp_path):
    store = Store(str(tmp_path))
    store.write_bytes("a/b/data.bin", b"x" * 1000)
    assert (tmp_path / "a/b/data.bin").read_bytes() == b"x" * 1000
    assert os.listdir(tmp_path / "a/b") == ["data.bin"]


def test_local_exception_mid_write_leaves_nothing(tmp_path):
    store = Store(str(tmp_path))
    _write_then_fail(store, "out/part-00000.parquet")
    assert not store.exists("out/part-00000.parquet")
    assert os.listdir(tmp_path / "out") == []  # no staged leftovers either


def test_local_failed_rewrite_keeps_previous_version(tmp_path):
    store = Store(str(tmp_path))
    store.write_bytes("state.json", b"old")
    _write_then_fail(store, "state.json")
    assert store.read_bytes("state.json") == b"old"


def test_file_url_and_relative_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Store("rel").write_text("x.txt", "hello")
    assert Store(f"file://{tmp_path}/rel").read_text("x.txt") == "hello"
    assert Store("rel").url == str(tmp_path / "rel")


def test_memory_store_commit_semantics():
    store = Store("memory://lofipipe-test-commit")
    _write_then_fail(store, "x.bin")
    assert not store.exists("x.bin")
    store.write_bytes("x.bin", b"123")
    assert store.read_bytes("x.bin") == b"123"


def test_listing_is_sorted_and_filtered(tmp_path):
    for name in ["b.mp4", "a.mp4", "c.txt", "sub/z.mp4", "sub/a.mp4"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"1")
    store = Store(str(tmp_path))
    assert store.list() == ["a.mp4", "b.mp4", "c.txt"]
    assert store.list(pattern="*.mp4", recursive=True) == [
        "a.mp4",
        "b.mp4",
        "sub/a.mp4",
        "sub/z.mp4",
    ]
    urls = [u for u, _ in list_files(str(tmp_path), {}, ["mp4"])]
    assert urls == [str(tmp_path / n) for n in ["a.mp4", "b.mp4", "sub/a.mp4", "sub/z.mp4"]]
    globbed = [u for u, _ in list_files(str(tmp_path / "sub" / "*.mp4"), {}, ["mp4"])]
    assert globbed == [str(tmp_path / "sub/a.mp4"), str(tmp_path / "sub/z.mp4")]


def test_listing_missing_folder_is_clear_error(tmp_path):
    with pytest.raises(StorageError, match="no such folder or file"):
        list_files(str(tmp_path / "nope"), {}, ["mp4"])


def test_table_round_trip(tmp_path):
    store = Store(str(tmp_path))
    table = pa.table({"a": [1, 2], "b": ["x", None]})
    store.write_table("t.parquet", table)
    assert store.read_table("t.parquet").equals(table)


def test_parse_storage_options_types_and_nesting():
    options = parse_storage_options(
        ["anon=false", "endpoint_url=http://127.0.0.1:9", "client_kwargs.region_name=eu-west-1"]
    )
    assert options == {
        "anon": False,
        "endpoint_url": "http://127.0.0.1:9",
        "client_kwargs": {"region_name": "eu-west-1"},
    }
    with pytest.raises(StorageError, match="expected key=value"):
        parse_storage_options(["novalue"])


def test_credentials_are_redacted_everywhere(monkeypatch):
    secret = "very-secret-value-123"
    options = {"key": "AKIAEXAMPLE123", "secret": secret, "endpoint_url": "http://127.0.0.1:1"}
    assert secret not in repr(Store("s3://bucket/x", options))
    text = redact(f"failed with secret={secret} key=AKIAEXAMPLE123 at http://127.0.0.1:1", options)
    assert secret not in text and "AKIAEXAMPLE123" not in text
    assert "http://127.0.0.1:1" in text and REDACTED in text
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-secret-abcdef")
    assert "env-secret-abcdef" not in redact("oops env-secret-abcdef")


@pytest.mark.s3
def test_s3_commit_semantics(s3_bucket):
    bucket, options = s3_bucket
    store = Store(f"s3://{bucket}/root", options)
    _write_then_fail(store, "shards/part-00000.parquet")
    assert not store.exists("shards/part-00000.parquet")
    assert store.list("shards") == []
    store.write_bytes("shards/part-00001.parquet", b"done")
    store.write_bytes("shards/part-00000.parquet", b"done too")
    assert store.list("shards") == ["shards/part-00000.parquet", "shards/part-00001.parquet"]
    assert store.read_bytes("shards/part-00001.parquet") == b"done"


@pytest.mark.s3
def test_s3_listing_sees_what_other_processes_wrote(s3_bucket):
    bucket, options = s3_bucket
    store = Store(f"s3://{bucket}/fresh", options)
    store.write_bytes("parts/a.json", b"{}")
    assert store.list("parts") == ["parts/a.json"]  # now in s3fs's listing cache
    assert not store.exists("parts/b.json")
    other = s3fs.S3FileSystem(skip_instance_cache=True, **options)  # as a Ray worker has
    other.pipe_file(f"{bucket}/fresh/parts/b.json", b"{}")
    assert store.list("parts") == ["parts/a.json", "parts/b.json"]
    assert store.exists("parts/b.json")


@pytest.mark.s3
def test_s3_object_replaced_while_read_is_read_again(s3_bucket):
    """A worker rewrites a run's metrics while the driver reads them: the reader's open
    object expires (its ETag changed), which is worth a retry that reads the new version."""
    bucket, options = s3_bucket
    store = Store(f"s3://{bucket}/race", options)
    store.write_table("runs/r/metrics.parquet", pa.table({"step": [1]}))
    handle = s3fs.S3FileSystem(skip_instance_cache=True, **options).open(
        f"{bucket}/race/runs/r/metrics.parquet", "rb", block_size=4
    )
    handle.read(4)
    store.write_table("runs/r/metrics.parquet", pa.table({"step": [1, 2]}))
    with pytest.raises(OSError) as expired:
        handle.read()
    assert type(expired.value).__name__ == "FileExpired" and is_transient(expired.value)
    assert store.read_table("runs/r/metrics.parquet")["step"].to_pylist() == [1, 2]


@pytest.mark.s3
def test_s3_large_object_goes_multipart_and_commits_whole(s3_bucket, monkeypatch):
    import lofipipe.storage as storage

    monkeypatch.setattr(storage, "_SINGLE_PUT_BYTES", 1024)
    bucket, options = s3_bucket
    store = Store(f"s3://{bucket}", options)
    data = os.urandom(6 * 2**20)
    store.write_bytes("big.bin", data)
    assert store.read_bytes("big.bin") == data
    _write_then_fail(store, "big2.bin")
    assert not store.exists("big2.bin")


@pytest.mark.s3
def test_s3_errors_never_show_credentials(s3_server):
    options = {
        "endpoint_url": s3_server,
        "key": "AKIAWRONGKEY0001",
        "secret": "wrong-secret-value-42",
    }
    store = Store("s3://no-such-bucket-lofipipe/root", options)
    with pytest.raises((StorageError, FileNotFoundError)) as caught:
        store.read_bytes("missing.txt")
    assert "wrong-secret-value-42" not in str(caught.value)
    assert "AKIAWRONGKEY0001" not in str(caught.value)


@pytest.mark.s3
def test_s3_options_from_the_environment(s3_bucket, s3_server, monkeypatch):
    from conftest import S3_KEY, S3_SECRET

    bucket, _ = s3_bucket
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", S3_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", S3_SECRET)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    store = Store(f"s3://{bucket}/env")
    store.write_text("hello.txt", "from env")
    assert store.read_text("hello.txt") == "from env"
    assert S3_SECRET not in redact(f"boom {S3_SECRET}")


def test_committed_files_get_umask_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        Store(str(tmp_path)).write_text("x.txt", "shared")
    finally:
        os.umask(old)
    assert (tmp_path / "x.txt").stat().st_mode & 0o777 == 0o644


def test_option_values_are_not_reinterpreted():
    options = parse_storage_options(
        [
            "key=012345",
            "secret=*alias",
            "token=0x1F",
            "max_concurrency=8",
            "anon=FALSE",
            "region=yes",
        ]
    )
    assert options == {
        "key": "012345",
        "secret": "*alias",
        "token": "0x1F",
        "max_concurrency": 8,
        "anon": False,
        "region": "yes",
    }


def test_folder_glob_and_file_urls_name_files_alike(tmp_path):
    (tmp_path / "a.mp4").write_bytes(b"1")
    by_folder = [u for u, _ in list_files(f"file://{tmp_path}", {}, ["mp4"])]
    by_glob = [u for u, _ in list_files(f"{tmp_path}/*.mp4", {}, ["mp4"])]
    by_file = [u for u, _ in list_files(str(tmp_path / "a.mp4"), {}, ["mp4"])]
    assert by_folder == by_glob == by_file == [str(tmp_path / "a.mp4")]


@pytest.mark.s3
def test_unreachable_storage_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("LOFIPIPE_STORAGE_RETRY_S", "0")  # no waiting for it to come back
    store = Store(
        "s3://bucket/root",
        {
            "endpoint_url": "http://127.0.0.1:1",
            "key": "k1234",
            "secret": "unreachable-secret-77",
            "config_kwargs": {"retries": {"max_attempts": 1}},
        },
    )
    with pytest.raises(StorageError) as caught:
        store.read_bytes("x")
    message = str(caught.value)
    assert message.startswith("cannot read s3://bucket/root/x: ")
    assert "\n" not in message and "unreachable-secret-77" not in message


@pytest.mark.s3
@pytest.mark.reliability
def test_s3_down_for_a_few_seconds_is_ridden_out():
    """Its own moto server, stopped before a write and started again on the same port 3 s
    later (moto keeps the objects in this process): the write waits and lands, and what
    was written before is still there. botocore's own retries are off, so this is lofipipe's
    retry at work."""
    import threading

    import boto3
    from conftest import S3_KEY, S3_SECRET, _free_port
    from moto.server import ThreadedMotoServer

    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=S3_KEY,
        aws_secret_access_key=S3_SECRET,
        region_name="us-east-1",
    ).create_bucket(Bucket="outage")
    store = Store(
        "s3://outage/root",
        {
            "endpoint_url": endpoint,
            "key": S3_KEY,
            "secret": S3_SECRET,
            "config_kwargs": {"retries": {"max_attempts": 1}},
        },
    )
    store.write_text("before.txt", "before")
    server.stop()
    back = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    restart = threading.Timer(3.0, back.start)
    restart.start()
    try:
        store.write_text("during.txt", "during")
        assert store.read_text("before.txt") == "before"
        assert store.read_text("during.txt") == "during"
        assert store.list("") == ["before.txt", "during.txt"]
        record(
            "fault",
            "S3 server stopped for 3 s during a write, then restarted",
            "the write waited (lofipipe's storage retry) and landed; earlier objects intact",
            "test_storage",
        )
    finally:
        restart.join()
        back.stop()


@pytest.mark.s3
def test_s3_remove_deletes_a_file_written_after_its_folder_was_listed(s3_bucket):
    bucket, options = s3_bucket
    store = Store(f"s3://{bucket}/root", options)
    store.write_text("journal/other.json", "{}")
    assert not store.exists("journal/part-00001.json")  # the client lists the folder
    store.write_text("journal/part-00001.json", "{}")
    store.remove("journal/part-00001.json")
    store.remove("journal/never-written.json")  # nothing there: fine
    assert store.list("journal") == ["journal/other.json"]
    assert Store(f"s3://{bucket}/root", options).list("journal") == ["journal/other.json"]
