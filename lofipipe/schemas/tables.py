"""Arrow schemas of every table lofipipe writes, each named and versioned.

The name and version travel in the Parquet file's schema metadata (`lofipipe.schema`,
`lofipipe.schema_version`), so a reader can refuse a file it does not understand. Types are
kept to what pyarrow, fastparquet, pandas and duckdb all read: flat columns, lists of
primitives, no maps or unions.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from lofipipe import __version__
from lofipipe.errors import InputError


@dataclass(frozen=True)
class TableSchema:
    """A named, versioned Arrow schema."""

    name: str
    version: int
    fields: tuple[pa.Field, ...]

    @property
    def arrow(self) -> pa.Schema:
        return pa.schema(
            list(self.fields),
            metadata={
                "lofipipe.schema": self.name,
                "lofipipe.schema_version": str(self.version),
                "lofipipe.version": __version__,
            },
        )

    @property
    def column_names(self) -> list[str]:
        return [f.name for f in self.fields]

    def from_rows(self, rows: Iterable[Mapping[str, Any]]) -> pa.Table:
        """A table of this schema; missing keys become nulls, unknown keys are an error."""
        rows = list(rows)
        names = set(self.column_names)
        for row in rows:
            extra = set(row) - names
            if extra:
                raise ValueError(f"{self.name}: unknown columns {sorted(extra)}")
        columns = [_column(field, [row.get(field.name) for row in rows]) for field in self.fields]
        return pa.Table.from_arrays(columns, schema=self.arrow)

    def check(self, table: pa.Table, where: str) -> pa.Table:
        """Verifies that a table read back is of this schema and version."""
        metadata = table.schema.metadata or {}
        name = metadata.get(b"lofipipe.schema", b"").decode()
        version = metadata.get(b"lofipipe.schema_version", b"0").decode()
        if name != self.name:
            raise InputError(f"{where}: not a lofipipe {self.name} table (found {name!r})")
        if int(version) > self.version:
            raise InputError(
                f"{where}: {self.name} schema version {version} is newer than "
                f"this lofipipe understands ({self.version}); upgrade lofipipe"
            )
        missing = [n for n in self.column_names if n not in table.column_names]
        if missing:
            raise InputError(f"{where}: missing columns {missing}")
        return table.select(self.column_names).cast(self.arrow)


def _column(field: pa.Field, values: list) -> pa.Array:
    kind = field.type
    if (
        pa.types.is_list(kind)
        and pa.types.is_binary(kind.value_type)
        and all(value is not None for value in values)
    ):
        # Flat values plus offsets: many times faster than converting nested lists of
        # large bytes objects, which is what snippet frames are.
        offsets = np.cumsum([0] + [len(value) for value in values], dtype=np.int32)
        flat = pa.array([item for value in values for item in value], kind.value_type)
        return pa.ListArray.from_arrays(pa.array(offsets), flat, type=kind)
    return pa.array(values, kind)


def _f(name: str, kind: pa.DataType, nullable: bool = True) -> pa.Field:
    return pa.field(name, kind, nullable=nullable)


# The subset of a video that no annotation lists (an unlabelled collection, or a video
# the annotation file leaves out).
UNLABELLED = "unlabelled"
# The errors.parquet reason of a file under --videos whose extension is not a video's.
SKIPPED_EXTENSION = "skipped_extension"

MANIFEST = TableSchema(
    "manifest",
    1,
    (
        _f("video_id", pa.string(), False),
        _f("uri", pa.string(), False),
        _f("size", pa.int64()),
        _f("source_signature", pa.string()),  # size + mtime or ETag: cheap change detection
        _f("fingerprint", pa.string()),  # BLAKE2b-128 of the file's bytes
        _f("duration", pa.float64()),  # seconds
        _f("start_time", pa.float64()),  # seconds; the first frame's presentation time
        _f("avg_fps", pa.float64()),
        _f("num_frames", pa.int64()),  # null when the container does not say
        _f("width", pa.int32()),  # as stored, before rotation
        _f("height", pa.int32()),
        _f("rotation", pa.int16()),  # degrees counter-clockwise to display upright: 0/90/180/270
        _f("codec", pa.string()),
        _f("has_audio", pa.bool_()),
        _f("subset", pa.string()),  # the annotations' subset, or UNLABELLED
        _f("status", pa.string(), False),  # ok | failed
        _f("error", pa.string()),  # "<reason>: <one line>", when failed
        _f("probe_seconds", pa.float64()),
        _f("lofipipe_version", pa.string()),
    ),
)

ANNOTATIONS = TableSchema(
    "annotations",
    1,
    (
        _f("video_id", pa.string(), False),
        _f("subset", pa.string()),
        _f("label", pa.string(), False),
        _f("label_id", pa.int32(), False),  # index into the sorted list of labels
        _f("start", pa.float64(), False),  # seconds
        _f("end", pa.float64(), False),
        _f("video_duration", pa.float64()),
        _f("source_format", pa.string(), False),  # activitynet | actionformer | opentad | thumos14
    ),
)

SNIPPETS = TableSchema(
    "snippets",
    1,
    (
        _f("video_id", pa.string(), False),
        _f("fidelity", pa.string(), False),
        _f("index", pa.int32(), False),
        _f("start", pa.float64(), False),
        _f("end", pa.float64(), False),
        _f("center", pa.float64(), False),
        _f("frame_times", pa.list_(pa.float64())),
        _f("num_frames", pa.int16(), False),
        _f("height", pa.int16(), False),
        _f("width", pa.int16(), False),
        _f("encoding", pa.string(), False),  # h264 | jpeg | raw (media/frame_codec.py)
        _f("frames", pa.list_(pa.binary())),  # F encoded frames, upright
        _f("source_fingerprint", pa.string()),
    ),
)

FEATURES = TableSchema(
    "features",
    1,
    (
        _f("video_id", pa.string(), False),
        _f("encoder_fingerprint", pa.string(), False),
        _f("num_snippets", pa.int32(), False),
        _f("dim", pa.int32(), False),
        _f("values", pa.list_(pa.float32())),  # [num_snippets * dim], row-major
        _f("snippet_start", pa.list_(pa.float64())),
        _f("snippet_end", pa.list_(pa.float64())),
        _f("source_fingerprint", pa.string()),
    ),
)

METRICS = TableSchema(
    "metrics",
    1,
    (
        _f("kind", pa.string(), False),  # step | epoch | resume (from the epoch's checkpoint)
        _f("epoch", pa.int32(), False),  # 1-based
        _f("step", pa.int64(), False),  # optimizer steps done
        _f("loss", pa.float64()),  # mean over the steps of an epoch row
        _f("cls_loss", pa.float64()),
        _f("reg_loss", pa.float64()),
        _f("lr", pa.float64()),
        _f("val_average_map", pa.float64()),  # epoch rows
        _f("val_map", pa.list_(pa.float64())),  # at each of the run's tIoU thresholds
        _f("seconds", pa.float64()),  # wall time of the step or epoch
    ),
)

ERRORS = TableSchema(
    "errors",
    1,
    (
        _f("stage", pa.string(), False),  # ingest | annotations | materialize | extract | train
        _f("video_id", pa.string()),
        _f("uri", pa.string()),
        _f("reason", pa.string(), False),  # a short code to count by
        _f("error", pa.string(), False),  # one line
        _f("attempts", pa.int32()),
    ),
)

ALL = (MANIFEST, ANNOTATIONS, SNIPPETS, FEATURES, METRICS, ERRORS)
