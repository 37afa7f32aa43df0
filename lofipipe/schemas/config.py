"""Typed, frozen configuration: defaults live here and nowhere else.

A config is built from the defaults, then a YAML file, then `key=value` overrides, in that
order. Unknown keys and bad values raise `ConfigError` naming the dotted key.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import yaml

from lofipipe.errors import ConfigError
from lofipipe.schemas.preprocess import PREPROCESS_PRESETS

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

_Section = TypeVar("_Section", bound="DataclassInstance")


def _check(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"{key}: {message}")


@dataclass(frozen=True)
class RayConfig:
    """Where the job runs: a local Ray by default, a cluster when an address is given."""

    address: str | None = None  # None: RAY_ADDRESS if set, else a new local instance
    num_cpus: int | None = None  # for a local instance; None: all cores of the machine
    # auto: GPUs when the cluster has them or its autoscaler can start them; on: require
    # them; off: CPUs only
    gpus: Literal["auto", "on", "off"] = "auto"

    def __post_init__(self) -> None:
        _check(self.num_cpus is None or self.num_cpus >= 1, "num_cpus", "must be at least 1")


# The synthetic dataset's action classes: one motion pattern each (see media/synth.py).
MOTION_PATTERNS = (
    "swing",
    "bounce",
    "orbit",
    "pulse",
    "zigzag",
    "figure_eight",
    "shake",
    "sweep",
)


@dataclass(frozen=True)
class SynthConfig:
    """The synthetic TAL dataset; the defaults are the demo's, small enough for 2 cores."""

    videos: int = 24
    seconds: float = 24.0
    classes: int = 4
    width: int = 160
    height: int = 120
    fps: int = 15
    seed: int = 0
    validation_fraction: float = 0.25
    actions_per_video: tuple[int, int] = (1, 3)
    action_seconds: tuple[float, float] = (2.0, 5.0)
    distractors: int = 3
    # The look, not the motion (media/synth.py): a, the demo's (white disc, blocky texture,
    # still camera); b, a shifted domain to adapt to (striped texture, a smaller dark disc,
    # pixel noise, camera motion) with the same classes and, for a seed, annotations.
    domain: Literal["a", "b"] = "a"

    def __post_init__(self) -> None:
        _check(self.videos >= 1, "videos", "must be at least 1")
        _check(
            1 <= self.classes <= len(MOTION_PATTERNS),
            "classes",
            f"must be between 1 and {len(MOTION_PATTERNS)}",
        )
        for key in ("width", "height"):
            value = getattr(self, key)
            _check(value >= 32, key, f"must be at least 32 pixels, got {value}")
            _check(value % 2 == 0, key, f"must be even (H.264 4:2:0), got {value}")
        _check(1 <= self.fps <= 120, "fps", "must be between 1 and 120")
        _check(0.0 <= self.validation_fraction < 1.0, "validation_fraction", "must be in [0, 1)")
        low, high = self.actions_per_video
        _check(1 <= low <= high, "actions_per_video", "must be [min, max] with 1 <= min <= max")
        short, long = self.action_seconds
        _check(0 < short <= long, "action_seconds", "must be [min, max] with 0 < min <= max")
        # Each action needs its own span plus a gap of at least one second on either side.
        _check(
            self.seconds >= high * (long + 1.0) + 1.0,
            "seconds",
            f"must be at least {high * (long + 1.0) + 1.0:g} to fit {high} actions of up "
            f"to {long:g} s",
        )
        _check(self.distractors >= 0, "distractors", "must be >= 0")


@dataclass(frozen=True)
class IngestConfig:
    """Listing and probing videos."""

    # What cameras, broadcasters and the web write; any other file under --videos is
    # counted and listed in errors.parquet as skipped_extension.
    extensions: tuple[str, ...] = (
        *("mp4", "mkv", "webm", "avi", "mov", "m4v", "mpg", "mpeg"),
        *("ts", "m2ts", "mts", "3gp", "flv", "wmv", "ogv", "vob", "mxf"),
    )
    probe_timeout_s: float = 60.0  # per video, plus the per-GB allowance for hashing
    probe_timeout_s_per_gb: float = 60.0
    fingerprint_block_mb: int = 8
    # Resource limits: a video past any of them fails its probe, before any decoding.
    max_pixels: int = 4096 * 2304  # width x height of a frame (4K DCI fits, 8K does not)
    max_duration_s: float = 24 * 3600.0
    max_file_gb: float = 64.0

    def __post_init__(self) -> None:
        _check(len(self.extensions) > 0, "extensions", "must list at least one extension")
        _check(self.probe_timeout_s > 0, "probe_timeout_s", "must be > 0")
        _check(self.probe_timeout_s_per_gb >= 0, "probe_timeout_s_per_gb", "must be >= 0")
        _check(self.fingerprint_block_mb >= 1, "fingerprint_block_mb", "must be >= 1")
        _check(self.max_pixels >= 1, "max_pixels", "must be at least 1")
        _check(self.max_duration_s > 0, "max_duration_s", "must be > 0")
        _check(self.max_file_gb > 0, "max_file_gb", "must be > 0")


X264_PRESETS = (
    "ultrafast",
    "superfast",
    "veryfast",
    "faster",
    "fast",
    "medium",
    "slow",
    "slower",
    "veryslow",
)


@dataclass(frozen=True)
class MaterializeConfig:
    """Snippet shards for a schedule's fidelities."""

    schedule: str = "demo"  # a preset (lofi-anet, lofi-thumos, multigrid, demo) or .yaml file
    # How frames are stored (media/frame_codec.py): h264 (per-snippet H.264 streams, a few
    # percent of raw), jpeg, or raw (uncompressed RGB, for small jobs on fast local disks)
    encoding: Literal["h264", "jpeg", "raw"] = "h264"
    crf: int = 24  # h264: x264's constant rate factor (lower: larger, closer to the source)
    # h264: x264's speed preset; slower ones store fewer bytes for the same quality, at a
    # cost in materialize throughput
    x264_preset: str = "ultrafast"
    jpeg_quality: int = 90
    videos_per_shard: int = 8
    # Decoder threads per video; 0: the shard task's CPUs (one), as Ray counts them: more
    # threads than that only add FFmpeg's frame-threading overhead to every busy core
    decode_threads: int = 0
    # A shard task's time limit: this much per video plus this much per hour of video.
    video_timeout_s: float = 300.0
    video_timeout_s_per_hour: float = 1800.0
    max_attempts: int = 2  # attempts that may crash or hang on a video before quarantine
    # How frames are resized, cropped and normalized (schemas/preprocess.py): a preset
    # (squash, squash-fast, tsm-test, videomaev2-tad), or auto: the preset of the encoder
    # the command uses (extract.encoder for materialize and extract, train.encoder for
    # train --mode lofi|losa)
    preprocess: str = "auto"

    def __post_init__(self) -> None:
        _check(
            self.preprocess == "auto" or self.preprocess in PREPROCESS_PRESETS,
            "preprocess",
            f"must be auto or a preset ({', '.join(PREPROCESS_PRESETS)}), got {self.preprocess!r}",
        )
        _check(1 <= self.jpeg_quality <= 100, "jpeg_quality", "must be between 1 and 100")
        _check(0 <= self.crf <= 51, "crf", "must be between 0 and 51")
        _check(
            self.x264_preset in X264_PRESETS,
            "x264_preset",
            f"must be one of {', '.join(X264_PRESETS)}, got {self.x264_preset!r}",
        )
        _check(self.videos_per_shard >= 1, "videos_per_shard", "must be at least 1")
        _check(self.decode_threads >= 0, "decode_threads", "must be >= 0")
        _check(self.video_timeout_s > 0, "video_timeout_s", "must be > 0")
        _check(self.video_timeout_s_per_hour >= 0, "video_timeout_s_per_hour", "must be >= 0")
        _check(self.max_attempts >= 1, "max_attempts", "must be at least 1")


@dataclass(frozen=True)
class ExtractConfig:
    """Features from an encoder over the full-fidelity snippets."""

    encoder: str = "tiny"  # a name from lofipipe.models.registry.ENCODERS
    source: Literal["shards", "videos"] = "shards"  # full-fidelity shards, or decode videos
    checkpoint: str | None = None  # weights URL; None: random weights from `seed`
    losa: bool = False  # ViTs: run LoSA adapters beside the frozen backbone
    batch_size: int = 32  # snippets per forward pass
    workers: int = 0  # encoder actors; 0: one per GPU, else one per CPU
    export: str | None = None  # folder URL for <video_id>.npy files (ActionFormer, OpenTAD)
    # the encoder's arithmetic, part of the feature fingerprint; auto: bf16 on GPUs, fp32
    # on CPUs
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    seed: int = 0
    # Where an actor decodes h264 shards' frames: cpu (its thread pool; a GPU actor holds
    # one CPU), or gpu: its GPU's video decoder (NVDEC), the same pixels
    shard_decoder: Literal["cpu", "gpu"] = "cpu"

    def __post_init__(self) -> None:
        _check(self.batch_size >= 1, "batch_size", "must be at least 1")
        _check(self.workers >= 0, "workers", "must be >= 0")


@dataclass(frozen=True)
class FeatureImportConfig:
    """`lofipipe features import`: per-video feature files made by other tools.

    Snippet i of a file spans [(offset + i * stride) / fps, that + frames / fps) seconds,
    as the tool sampled it (ActionFormer: feat_stride, num_frames, default_fps).
    """

    source: str | None = None  # folder URL holding <video_id>.npy / .npz / .pt files
    # actionformer and npy: (T, C) arrays; opentad: (T, C), or (C, T) where only that fits
    format: Literal["actionformer", "opentad", "npy"] = "npy"
    fps: float | None = None  # frames per second the tool sampled at
    stride: int | None = None  # frames between the starts of consecutive snippets
    frames: int | None = None  # frames per snippet
    offset: float = 0.0  # frames before the first snippet's first frame
    # A file must cover at least this fraction of its video's duration, less one stride
    # (its last snippet may end up to one stride past the end).
    min_coverage: float = 0.9

    def __post_init__(self) -> None:
        _check(self.fps is None or self.fps > 0, "fps", "must be positive")
        _check(self.stride is None or self.stride >= 1, "stride", "must be at least 1 frame")
        _check(
            self.frames is None or 1 <= self.frames <= 256,
            "frames",
            "must be between 1 and 256",
        )
        _check(0 < self.min_coverage <= 1, "min_coverage", "must be in (0, 1]")


@dataclass(frozen=True)
class HeadConfig:
    """The TAL head and its inference (ActionFormer's defaults where it has them)."""

    dim: int = 256  # width of the projection and the pyramid
    levels: int = 6  # pyramid levels, strides 1, 2, 4, ...
    window: int = 0  # stride sampling: snippets per window; 0: the schedule's full L
    nms_sigma: float = 0.5  # Gaussian soft-NMS
    max_segments: int = 100  # kept per video
    pre_nms_topk: int = 2000  # candidates per level
    # conv: a stride-2 convolution per level; transformer: ActionFormer's local
    # self-attention blocks (docs/train.md, "The head's architectures")
    arch: Literal["conv", "transformer"] = "conv"
    attention_window: int = 19  # transformer: steps a point attends to (THUMOS-14: 19)
    heads: int = 4  # transformer: attention heads, a divisor of dim
    stem_blocks: int = 2  # transformer: blocks at stride 1 before the pyramid

    def __post_init__(self) -> None:
        _check(self.dim >= 1, "dim", "must be at least 1")
        _check(1 <= self.levels <= 6, "levels", "must be between 1 and 6")
        _check(self.window >= 0, "window", "must be >= 0")
        _check(self.nms_sigma > 0, "nms_sigma", "must be positive")
        _check(self.max_segments >= 1, "max_segments", "must be at least 1")
        _check(self.pre_nms_topk >= 1, "pre_nms_topk", "must be at least 1")
        _check(
            self.attention_window >= 3 and self.attention_window % 2 == 1,
            "attention_window",
            "must be odd and at least 3",
        )
        _check(self.heads >= 1, "heads", "must be at least 1")
        _check(self.dim % self.heads == 0, "heads", f"must divide dim ({self.dim})")
        _check(self.stem_blocks >= 0, "stem_blocks", "must be >= 0")


@dataclass(frozen=True)
class TrainConfig:
    """A training run: Ray Train workers, AdamW with warm-up and cosine decay."""

    # head: the TAL head on extracted features; lofi: encoder and head end to end on the
    # reduced-fidelity snippet shards of `materialize.schedule`; losa: a frozen ViT's LoSA
    # adapters and the head on its full-fidelity shards
    mode: Literal["head", "lofi", "losa"] = "head"
    features: str | None = None  # head: the feature fingerprint (lofipipe features lists them)
    encoder: str = "tsm_r18"  # lofi, losa: a name from lofipipe.models.registry.ENCODERS
    checkpoint: str | None = None  # lofi, losa: the encoder's starting weights (URL)
    encoder_epochs: int = 10  # the LoFi recipe's stage 2 (train.epochs is stage 3's)
    encoder_lr_scale: float = 0.1  # lofi, losa: the encoder's learning rate over train.lr
    # lofi: the encoder's batch-norm statistics during training; frozen: its own (the
    # LoFi paper's setting); recalibrate: re-estimated once, at the start of a run, on the
    # training videos' full-fidelity snippets (AdaBN: for an encoder from another domain)
    batchnorm: Literal["frozen", "recalibrate"] = "frozen"
    activation_checkpointing: bool = False  # lofi, losa: recompute encoder activations
    # Steps whose inputs are read and decoded ahead, on a background thread, while the
    # current step runs (each holds one step's share of decoded frames); 0: none
    prefetch_batches: int = 1
    # lofi, losa: where a worker decodes h264 shards' frames: cpu (a thread pool), or gpu:
    # its GPU's video decoder (NVDEC), which leaves its CPUs to the rest of the step
    shard_decoder: Literal["cpu", "gpu"] = "cpu"
    # lofi, losa: the encoder's arithmetic; auto: bf16 on GPUs, fp32 on CPUs; fp16 trains
    # with loss scaling (lofipipe/models/precision.py)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    run: str | None = None  # runs/<run>/; rerunning a run resumes it
    workers: int = 1  # data-parallel Ray Train workers
    # ActionFormer's THUMOS-14 schedule: 35 epochs of which 5 warm up, batches of 2
    # videos (or windows) over all workers, AdamW at 1e-4 (ActivityNet-size sets: 16, 1e-3)
    epochs: int = 35
    warmup_epochs: float = 5.0
    batch_size: int = 2
    lr: float = 1e-4
    weight_decay: float = 0.05
    clip_grad_norm: float = 1.0
    # head mode: at least this many optimizer steps (ActionFormer's THUMOS-14 run makes
    # 3500); when the epochs over a small training set make fewer, each epoch passes over
    # its videos several times
    min_steps: int = 3500
    # head mode: a training video that fits in one window is cut to a random part of
    # this fraction of its length (ActionFormer's crop_ratio); [1, 1]: whole videos
    crop: tuple[float, float] = (0.9, 1.0)
    # an exponential moving average of the weights with this decay is what validation,
    # predictions and checkpoints' `ema` use (ActionFormer: 0.999); 0: off
    ema_decay: float = 0.0
    train_subset: str = "training"
    val_subset: str = "validation"
    tiou: str = "0.5:0.95:0.05"  # validation thresholds; THUMOS-14: 0.3:0.7:0.1
    keep_checkpoints: int = 2
    max_failures: int = 2  # worker-group restarts from the last checkpoint
    seed: int = 0
    head: HeadConfig = field(default_factory=HeadConfig)

    def __post_init__(self) -> None:
        _check(self.workers >= 1, "workers", "must be at least 1")
        _check(self.prefetch_batches >= 0, "prefetch_batches", "must be >= 0")
        _check(self.epochs >= 1, "epochs", "must be at least 1")
        _check(self.encoder_epochs >= 1, "encoder_epochs", "must be at least 1")
        _check(self.warmup_epochs >= 0, "warmup_epochs", "must be >= 0")
        _check(
            self.batch_size >= self.workers,
            "batch_size",
            f"must be at least the number of workers ({self.workers})",
        )
        _check(self.lr > 0, "lr", "must be positive")
        _check(self.encoder_lr_scale >= 0, "encoder_lr_scale", "must be >= 0")
        _check(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        _check(self.min_steps >= 0, "min_steps", "must be >= 0")
        _check(
            0 < self.crop[0] <= self.crop[1] <= 1,
            "crop",
            f"must be [low, high] with 0 < low <= high <= 1, got {list(self.crop)}",
        )
        _check(0 <= self.ema_decay < 1, "ema_decay", "must be in [0, 1)")
        _check(self.keep_checkpoints >= 1, "keep_checkpoints", "must be at least 1")
        _check(self.max_failures >= 0, "max_failures", "must be >= 0")
        _check(
            self.run is None
            or (
                self.run.replace("-", "").replace("_", "").replace(".", "").isalnum()
                and not self.run.startswith(".")
            ),
            "run",
            f"use letters, digits, '-', '_' and '.' (a folder name), got {self.run!r}",
        )


@dataclass(frozen=True)
class JobConfig:
    """`lofipipe run`: the whole graph from one recipe file."""

    root: str | None = None  # where everything is written (any storage URL)
    videos: str | None = None  # a folder (searched recursively) or glob of video files
    annotations: str | None = None  # ActivityNet .json or THUMOS-14 .txt files
    # head: a head on the extract section's features; lofi: the LoFi recipe from that
    # encoder; losa: LoSA adapters on it, then a head on the adapted features
    recipe: Literal["head", "lofi", "losa"] = "head"


@dataclass(frozen=True)
class Config:
    """Everything lofipipe can be configured with."""

    ray: RayConfig = field(default_factory=RayConfig)
    synth: SynthConfig = field(default_factory=SynthConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    materialize: MaterializeConfig = field(default_factory=MaterializeConfig)
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    feature_import: FeatureImportConfig = field(default_factory=FeatureImportConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    job: JobConfig = field(default_factory=JobConfig)


# Building -----------------------------------------------------------------------------------


def _type_name(kind: Any) -> str:
    return getattr(kind, "__name__", None) or str(kind).replace("typing.", "")


# A decimal number as people write them: 1e-4, 1E-4, 3e5, .5, -2e-3, +1.5. YAML 1.1 (and so
# PyYAML) reads those without a dot or an exponent sign as strings.
_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _number(value: Any) -> Any:
    """`value` as a float where it is a string that reads as a finite decimal number,
    else `value` itself."""
    if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        number = float(value)
        return number if math.isfinite(number) else value
    return value


def _coerce(kind: Any, value: Any, key: str) -> Any:
    """Checks `value` against the annotation `kind`, converting lists to tuples, and
    strings that read as numbers (`1e-4`) to numbers where a number is expected."""
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(kind)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(option, value, key)
            except ConfigError:
                pass
        raise ConfigError(f"{key}: expected {_type_name(kind)}, got {value!r}")
    if origin is Literal:
        _check(
            value in typing.get_args(kind),
            key,
            f"must be one of {', '.join(map(str, typing.get_args(kind)))}, got {value!r}",
        )
        return value
    if origin is tuple:
        _check(isinstance(value, (list, tuple)), key, f"expected a list, got {value!r}")
        args = typing.get_args(kind)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], item, key) for item in value)
        _check(len(value) == len(args), key, f"expected {len(args)} items, got {len(value)}")
        return tuple(_coerce(arg, item, key) for arg, item in zip(args, value, strict=True))
    if isinstance(kind, type) and dataclasses.is_dataclass(kind):
        _check(isinstance(value, Mapping), key, f"expected a mapping, got {value!r}")
        return build(kind, value, key + ".")
    if kind is bool:
        _check(isinstance(value, bool), key, f"expected true or false, got {value!r}")
        return value
    if kind is int:
        number = _number(value)
        if isinstance(number, float) and number.is_integer():  # 3e5, 2.0
            number = int(number)
        _check(
            isinstance(number, int) and not isinstance(number, bool),
            key,
            f"expected an integer, got {value!r}",
        )
        return number
    if kind is float:
        number = _number(value)
        _check(
            isinstance(number, (int, float)) and not isinstance(number, bool),
            key,
            f"expected a number, got {value!r}",
        )
        return float(number)
    if kind is str:
        _check(isinstance(value, str), key, f"expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {kind!r} for {key}")


def build(cls: type[_Section], values: Mapping[str, Any], prefix: str = "") -> _Section:
    """Builds the dataclass `cls` from plain values, checking keys and types.

    Raises:
        ConfigError: naming the dotted key (after `prefix`) that is unknown or invalid.
    """
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"{prefix}{unknown[0]}: unknown key (known: {', '.join(sorted(names))})")
    kwargs = {name: _coerce(hints[name], value, prefix + name) for name, value in values.items()}
    try:
        return cls(**kwargs)
    except ConfigError as error:
        raise ConfigError(f"{prefix}{error}") from None


def _merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for name, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(name), Mapping):
            merged[name] = _merge(merged[name], value)
        else:
            merged[name] = value
    return merged


def parse_override(text: str) -> dict[str, Any]:
    """Turns `a.b=value` (value in YAML syntax) into `{"a": {"b": value}}`."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"{text!r}: an override must look like key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        raise ConfigError(f"{key}: cannot parse value {raw!r}") from None
    *parents, leaf = key.split(".")
    nested: dict[str, Any] = {leaf: value}
    for part in reversed(parents):
        nested = {part: nested}
    return nested


def read_yaml_mapping(path: str, read_text: Callable[[str], str] | None = None) -> dict[str, Any]:
    """Reads a YAML file whose top level is a mapping, with the safe loader.

    Args:
        path: the file (any storage URL when `read_text` is given).
        read_text: reads `path`; defaults to the local filesystem.
    """
    try:
        text = read_text(path) if read_text else open(path, encoding="utf-8").read()
    except FileNotFoundError:
        raise ConfigError(f"file not found: {path}") from None
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{where}: not valid YAML") from None
    if loaded is not None and not isinstance(loaded, Mapping):
        raise ConfigError(f"{path}: the top level must be a mapping")
    return dict(loaded or {})


def load_config(
    path: str | None = None,
    overrides: Iterable[Mapping[str, Any] | str] = (),
    read_text: Callable[[str], str] | None = None,
) -> Config:
    """Builds the config from defaults, an optional YAML file and overrides.

    Args:
        path: a YAML file (any storage URL when `read_text` is given).
        overrides: `key=value` strings or nested mappings, applied in order.
        read_text: reads `path`; defaults to the local filesystem.
    """
    values = read_yaml_mapping(path, read_text) if path else {}
    for override in overrides:
        values = _merge(values, parse_override(override) if isinstance(override, str) else override)
    return build(Config, values)


def config_with(config: Config, **sections: Mapping[str, Any]) -> Config:
    """`config` with some keys of some sections replaced, checked again."""
    return load_config(None, [config_to_dict(config), dict(sections)])


def config_to_dict(config: Any) -> dict[str, Any]:
    """A plain, YAML-safe dict of a config (tuples become lists)."""

    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, tuple):
            return [plain(item) for item in value]
        return value

    return plain(config)


def config_to_yaml(config: Config, command: str) -> str:
    """The resolved config as YAML, headed by the command that produced it."""
    body = yaml.safe_dump(config_to_dict(config), sort_keys=False)
    return f"# Resolved by: {command}\n{body}"
