import duckdb
import fastparquet
import pandas as pd
import pytest

from lofipipe.errors import InputError
from lofipipe.schemas import tables
from lofipipe.storage import Store

SAMPLE_ROWS = {
    "manifest": [
        {
            "video_id": "v1",
            "uri": "/d/v1.mp4",
            "size": 10,
            "source_signature": "10:1",
            "fingerprint": "ab" * 16,
            "duration": 12.5,
            "start_time": 0.0,
            "avg_fps": 29.97,
            "num_frames": 375,
            "width": 320,
            "height": 240,
            "rotation": 90,
            "codec": "h264",
            "has_audio": True,
            "subset": "training",
            "status": "ok",
            "error": None,
            "probe_seconds": 0.01,
            "lofipipe_version": "0.1.0",
        },
        {
            "video_id": "v2",
            "uri": "/d/v2.mp4",
            "size": 0,
            "status": "failed",
            "error": "empty_file: empty file (0 bytes)",
        },
    ],
    "annotations": [
        {
            "video_id": "v1",
            "subset": "training",
            "label": "swing",
            "label_id": 0,
            "start": 1.5,
            "end": 3.25,
            "video_duration": 12.5,
            "source_format": "activitynet",
        },
    ],
    "snippets": [
        {
            "video_id": "v1",
            "fidelity": "full",
            "index": 0,
            "start": 0.0,
            "end": 0.8,
            "center": 0.4,
            "frame_times": [0.0, 0.1, 0.2],
            "num_frames": 3,
            "height": 8,
            "width": 8,
            "encoding": "raw",
            "frames": [bytes(range(192))] * 3,
            "source_fingerprint": "cd" * 16,
        },
    ],
    "features": [
        {
            "video_id": "v1",
            "encoder_fingerprint": "e1",
            "num_snippets": 2,
            "dim": 3,
            "values": [0.5, 1.0, 1.5, 2.0, 2.5, 3.0],
            "snippet_start": [0.0, 1.0],
            "snippet_end": [1.0, 2.0],
            "source_fingerprint": "cd" * 16,
        },
    ],
    "metrics": [
        {
            "kind": "step",
            "epoch": 1,
            "step": 1,
            "loss": 1.5,
            "cls_loss": 1.0,
            "reg_loss": 0.5,
            "lr": 1e-4,
            "val_average_map": None,
            "val_map": None,
            "seconds": 0.1,
        },
        {
            "kind": "epoch",
            "epoch": 1,
            "step": 1,
            "loss": 1.5,
            "cls_loss": 1.0,
            "reg_loss": 0.5,
            "lr": 1e-4,
            "val_average_map": 0.25,
            "val_map": [0.5, 0.0],
            "seconds": 0.3,
        },
    ],
    "errors": [
        {
            "stage": "ingest",
            "video_id": "v2",
            "uri": "/d/v2.mp4",
            "reason": "empty_file",
            "error": "empty_file: empty file (0 bytes)",
            "attempts": 1,
        },
    ],
}


def _normalize(value):
    if hasattr(value, "tolist"):
        value = value.tolist()
    if not isinstance(value, (list, bytes)) and pd.isna(value):
        return None
    return value


@pytest.mark.parametrize("schema", tables.ALL, ids=lambda s: s.name)
def test_round_trip_through_every_reader(tmp_path, schema):
    rows = SAMPLE_ROWS[schema.name]
    store = Store(str(tmp_path))
    store.write_table(f"{schema.name}.parquet", schema.from_rows(rows))
    path = str(tmp_path / f"{schema.name}.parquet")

    back = schema.check(store.read_table(f"{schema.name}.parquet"), path)
    assert back.schema.metadata[b"lofipipe.schema"] == schema.name.encode()
    assert back.schema.metadata[b"lofipipe.schema_version"] == str(schema.version).encode()
    full_rows = [{name: row.get(name) for name in schema.column_names} for row in rows]
    assert back.to_pylist() == full_rows

    frames = {
        "fastparquet": fastparquet.ParquetFile(path).to_pandas(),
        "pandas": pd.read_parquet(path),
        "duckdb": duckdb.sql(f"SELECT * FROM '{path}'").df(),
    }
    for reader, frame in frames.items():
        assert list(frame.columns) == schema.column_names, reader
        for expected, (_, got) in zip(full_rows, frame.iterrows(), strict=True):
            for name in schema.column_names:
                want, have = expected[name], _normalize(got[name])
                if isinstance(want, float):
                    assert have == pytest.approx(want), (reader, name)
                elif isinstance(want, list) and want and isinstance(want[0], float):
                    assert have == pytest.approx(want), (reader, name)
                else:
                    assert have == want, (reader, name)


def test_unknown_columns_are_rejected():
    with pytest.raises(ValueError, match="unknown columns"):
        tables.ERRORS.from_rows([{"stage": "x", "reason": "r", "error": "e", "bogus": 1}])


def test_check_refuses_other_tables_and_newer_versions(tmp_path):
    store = Store(str(tmp_path))
    store.write_table("m.parquet", tables.MANIFEST.from_rows(SAMPLE_ROWS["manifest"]))
    table = store.read_table("m.parquet")
    with pytest.raises(InputError, match="not a lofipipe annotations table"):
        tables.ANNOTATIONS.check(table, "m.parquet")
    newer = table.replace_schema_metadata(
        {**table.schema.metadata, b"lofipipe.schema_version": b"99"}
    )
    with pytest.raises(InputError, match="version 99 is newer"):
        tables.MANIFEST.check(newer, "m.parquet")
