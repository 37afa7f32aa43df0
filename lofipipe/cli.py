"""The `lofipipe` command line: parses options, builds the config, calls one run function."""

from __future__ import annotations

import functools
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from lofipipe import __version__
from lofipipe.errors import InputError, LofipipeError, StrictError, one_line
from lofipipe.layout import report_path
from lofipipe.schemas.config import (
    Config,
    config_to_yaml,
    config_with,
    load_config,
)
from lofipipe.schemas.stage import StageSummary
from lofipipe.storage import REDACTED, Store, is_secret_option, parse_storage_options, redact


def _command_line() -> str:
    """The command as typed, for the saved config, with credential options masked."""
    words, flag = [], "--storage-option"
    for word in sys.argv[1:]:
        if words and words[-1] == flag:
            word = _mask_option(word)
        elif word.startswith(flag + "="):
            word = f"{flag}={_mask_option(word[len(flag) + 1 :])}"
        words.append(word)
    return redact(shlex.join(["lofipipe", *words]))


def _mask_option(pair: str) -> str:
    name, sep, _ = pair.partition("=")
    return f"{name}={REDACTED}" if sep and is_secret_option(name.rsplit(".", 1)[-1]) else pair


def common_options(func: Callable | None = None, *, default_config: str | None = None) -> Callable:
    """--config, --set, --storage-option, --address and --gpus, shared by every command.
    `default_config` is the file read when no --config is given."""
    if func is None:
        return functools.partial(common_options, default_config=default_config)

    @click.option(
        "--config",
        "config_path",
        type=click.Path(dir_okay=False),
        default=default_config,
        show_default=default_config is not None,
        help="YAML config file; see the resolved config saved by any run.",
    )
    @click.option(
        "--set",
        "overrides",
        multiple=True,
        metavar="KEY=VALUE",
        help="Override one config key, e.g. --set ingest.probe_timeout_s=30.",
    )
    @click.option(
        "--storage-option",
        "storage_pairs",
        multiple=True,
        metavar="KEY=VALUE",
        help="fsspec storage option, e.g. endpoint_url=http://127.0.0.1:9000 "
        "(credentials are best left to the environment).",
    )
    @click.option(
        "--address",
        envvar="RAY_ADDRESS",
        default=None,
        help="Ray cluster to join (default: RAY_ADDRESS, else a local Ray).",
    )
    @click.option(
        "--gpus",
        type=click.Choice(["auto", "on", "off"]),
        default=None,
        help="Workers on GPUs: auto (default: when the cluster has or can start them), "
        "on (required) or off.",
    )
    @click.option(
        "--strict", is_flag=True, help="Exit with code 3 when any video failed (after the summary)."
    )
    @functools.wraps(func)
    def wrapper(config_path, overrides, storage_pairs, address, gpus, strict, **kwargs):
        click.get_current_context().meta["lofipipe.strict"] = strict
        storage_options = parse_storage_options(storage_pairs)
        ray_override = {"address": address} if address else {}
        ray_override |= {"gpus": gpus} if gpus else {}
        config = load_config(
            config_path, [*overrides, {"ray": ray_override} if ray_override else {}]
        )
        return func(config=config, storage_options=storage_options, **kwargs)

    return wrapper


class LofipipeGroup(click.Group):
    """Turns a `LofipipeError` into one `error:` line and its exit code."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except LofipipeError as error:
            # A lofipipe error raised in a Ray task or actor carries the remote
            # traceback; its last line is the error itself.
            remote = "Traceback" in str(error)
            click.echo(f"error: {redact(one_line(error, last=remote))}", err=True)
            sys.exit(error.exit_code)


@click.group(cls=LofipipeGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lofipipe")
def main():
    """Preprocessing, feature extraction and training pipelines for temporal action
    localization, on Ray, over any fsspec storage (local paths, s3://, memory://)."""


def _size(value: str) -> tuple[int, int]:
    try:
        width, height = (int(part) for part in value.lower().split("x"))
    except ValueError:
        raise click.BadParameter(f"expected WIDTHxHEIGHT, got {value!r}") from None
    return width, height


def _run_synth(config: Config, out: Store, command: str) -> None:
    from lofipipe.media.synth import synthesize
    from lofipipe.pipeline.progress import Progress

    with Progress("synth", config.synth.videos) as progress:
        summary = synthesize(config.synth, out, on_video=lambda _: progress.done())
    out.write_text("synth.yaml", config_to_yaml(config, command))
    subsets = ", ".join(f"{n} {s}" for s, n in sorted(summary.by_subset.items()))
    click.echo(progress.summary())
    click.echo(
        f"synth: {summary.videos} videos ({subsets}), {summary.seconds / 60:.1f} min, "
        f"{summary.segments} action segments of {summary.classes} classes"
    )
    click.echo(f"wrote {out.url_of('videos/')} and {out.url_of('annotations.json')}")


@main.command()
@click.argument("out")
@click.option("--videos", type=int, help="Number of videos.")
@click.option("--seconds", type=float, help="Length of each video in seconds.")
@click.option("--classes", type=int, help="Number of action classes (motion patterns).")
@click.option("--size", help="Frame size WIDTHxHEIGHT, e.g. 160x120.")
@click.option("--fps", type=int, help="Frames per second.")
@click.option("--seed", type=int, help="Random seed; the same seed gives the same files.")
@click.option(
    "--domain",
    type=click.Choice(["a", "b"]),
    help="The look: a, white disc, blocky texture, still camera (the default); b, the same "
    "actions and annotations filmed differently (striped texture, small dark disc, pixel "
    "noise, camera motion), to test adapting an encoder to a new domain.",
)
@common_options
def synth(out, videos, seconds, classes, size, fps, seed, domain, config, storage_options):
    """Make a synthetic untrimmed-video TAL dataset in OUT.

    Writes OUT/videos/*.mp4 (H.264) and OUT/annotations.json (ActivityNet-1.3 format,
    training and validation subsets). Same options and seed, same bytes.

    \b
    Examples:
      lofipipe synth data/synth
      lofipipe synth s3://bucket/synth --videos 100 --seconds 60 --classes 6 --size 224x168
      lofipipe synth data/synth-b --domain b --seed 1
    """
    width, height = _size(size) if size else (None, None)
    config = _with_options(
        config,
        "synth",
        videos=videos,
        seconds=seconds,
        classes=classes,
        fps=fps,
        seed=seed,
        domain=domain,
        width=width,
        height=height,
    )
    _run_synth(config, Store(out, storage_options), _command_line())


def _echo_summary(summary: StageSummary, root: Store) -> None:
    """The progress line of the work done, if any, then the summary lines; with --strict,
    exit code 3 when the summary counts failed videos."""
    if summary.progress_line:
        click.echo(summary.progress_line)
    for line in summary.lines(root):
        click.echo(line)
    failed = summary.failed_videos
    if failed and click.get_current_context().meta.get("lofipipe.strict"):
        raise StrictError(f"--strict: {failed} failed videos (reasons above)")


def _with_options(config: Config, section: str, **given) -> Config:
    """`config` with a command's own options (those given) set in `section`, re-checked."""
    chosen = {key: value for key, value in given.items() if value is not None}
    return config_with(config, **{section: chosen})


def _run_ingest(
    config: Config,
    root: Store,
    videos: str,
    annotations: str | None,
    storage_options: dict,
    command: str,
) -> None:
    from lofipipe.pipeline.ingest import run_ingest

    _echo_summary(run_ingest(config, root, videos, annotations, storage_options, command), root)


@main.command()
@click.argument("root")
@click.option(
    "--videos",
    "videos_url",
    required=True,
    help="Folder (searched recursively), glob or .txt list of video files, any fsspec URL.",
)
@click.option(
    "--annotations",
    "annotations_url",
    help="Annotations: a .json (ActivityNet-1.3, ActionFormer, OpenTAD), or THUMOS-14 "
    "<Class>_<subset>.txt files (folder or glob). Without it (an unlabelled collection) "
    "every video gets subset 'unlabelled'.",
)
@common_options
def ingest(root, videos_url, annotations_url, config, storage_options):
    """Probe the videos and write ROOT/manifest/videos.parquet and ROOT/annotations.parquet.

    Each video is probed as a Ray task under a time limit; one that cannot be read gets
    status=failed with a one-line reason and the job goes on. Files whose extension is not
    in ingest.extensions are counted and listed in errors.parquet (skipped_extension).
    Without --annotations, or for a video they leave out, the subset is 'unlabelled'. A
    rerun keeps unchanged videos and probes new, changed and failed ones.

    \b
    Examples:
      lofipipe ingest out/ --videos data/videos --annotations data/annotations.json
      lofipipe ingest out/ --videos /mnt/camera-archive
      lofipipe ingest s3://bucket/thumos --videos 's3://bucket/raw/*.mp4' \\
          --annotations s3://bucket/raw/annotations/ --set ingest.probe_timeout_s=30
    """
    _run_ingest(
        config,
        Store(root, storage_options),
        videos_url,
        annotations_url,
        storage_options,
        _command_line(),
    )


def _run_materialize(
    config: Config,
    root: Store,
    storage_options: dict,
    command: str,
    force: bool = False,
    retry_failed: bool = False,
) -> None:
    from lofipipe.pipeline.materialize import run_materialize

    _echo_summary(
        run_materialize(config, root, storage_options, command, force, retry_failed), root
    )


@main.command()
@click.argument("root")
@click.option(
    "--schedule",
    help="Preset (lofi-anet, lofi-anet-short, lofi-thumos, "
    "multigrid, demo) or a schedule .yaml file.",
)
@click.option(
    "--encoding",
    type=click.Choice(["h264", "jpeg", "raw"]),
    help="How frames are stored in the shards (default h264).",
)
@click.option("--retry-failed", is_flag=True, help="Also redo shards with failed videos.")
@click.option("--force", is_flag=True, help="Redo every shard.")
@common_options
def materialize(root, schedule, encoding, retry_failed, force, config, storage_options):
    """Decode every ok video of ROOT's manifest once and write snippet shards for each
    fidelity of the schedule to ROOT/shards/<fidelity>/.

    A rerun skips committed shards whose videos and settings are unchanged.

    \b
    Examples:
      lofipipe materialize out/ --schedule lofi-anet
      lofipipe materialize s3://bucket/anet --schedule my-schedule.yaml --encoding raw
      lofipipe materialize out/ --schedule demo --retry-failed
    """
    config = _with_options(config, "materialize", schedule=schedule, encoding=encoding)
    _run_materialize(
        config, Store(root, storage_options), storage_options, _command_line(), force, retry_failed
    )


def _run_extract(config: Config, root: Store, storage_options: dict, command: str):
    from lofipipe.pipeline.extract import run_extract

    summary = run_extract(config, root, storage_options, command)
    _echo_summary(summary, root)
    return summary


@main.command()
@click.argument("root")
@click.option("--encoder", help="Encoder name: tiny, tsm_r18, tsm_r50, vit_s, vit_b, vit_l, vit_g.")
@click.option("--checkpoint", help="Weights URL (any storage); without it, random weights.")
@click.option("--losa", is_flag=True, default=None, help="ViTs: add LoSA adapters.")
@click.option("--schedule", help="Schedule whose full-fidelity snippets are encoded.")
@click.option(
    "--from",
    "source",
    type=click.Choice(["shards", "videos"]),
    help="Read the full-fidelity shards (default) or decode the ingested videos "
    "directly, without shards.",
)
@click.option("--export", help="Folder URL for <video_id>.npy (T, C) files and JSON sidecars.")
@click.option("--workers", type=int, help="Encoder actors (default: one per GPU or CPU).")
@common_options
def extract(
    root, encoder, checkpoint, losa, schedule, source, export, workers, config, storage_options
):
    """Encode the full-fidelity snippets of ROOT's videos into
    ROOT/features/<encoder fingerprint>/, one Parquet row per video, reading them from the
    snippet shards or (--from videos) decoding the ingested videos.

    The fingerprint covers the architecture, the weights and the preprocessing, so a new
    checkpoint writes new features beside the old ones; parts already done for a
    fingerprint are skipped.

    \b
    Examples:
      lofipipe extract out/ --encoder tiny --schedule demo
      lofipipe extract s3://bucket/anet --encoder tsm_r18 --schedule lofi-anet \\
          --checkpoint s3://bucket/ckpt/tsm_r18_k400.pth --export s3://bucket/anet/npy
      lofipipe extract out/ --encoder tsm_r18 --schedule lofi-anet --from videos
    """
    config = _with_options(
        config,
        "extract",
        encoder=encoder,
        checkpoint=checkpoint,
        losa=losa,
        source=source,
        export=export,
        workers=workers,
    )
    config = _with_options(config, "materialize", schedule=schedule)
    _run_extract(config, Store(root, storage_options), storage_options, _command_line())


@main.group()
def weights():
    """Encoder checkpoints: what a file holds and which encoder it fits."""


@weights.command(name="inspect")
@click.argument("url")
@common_options
def inspect_weights(url, config, storage_options):
    """Print the layout a checkpoint is in (VideoMAE, MMAction2, TSM release, torchvision,
    lofipipe), the encoders it loads into and its parameter count.

    \b
    Examples:
      lofipipe weights inspect checkpoints/vit_g_hybrid_pt_1200e_k710_ft.pth
      lofipipe weights inspect s3://bucket/models/tsm_r50_kinetics.pth
    """
    from lofipipe.models.weights import inspect_checkpoint

    for line in inspect_checkpoint(url, storage_options).lines():
        click.echo(line)


class DefaultCommandGroup(click.Group):
    """A group whose first argument, when it names none of its commands, starts its
    `default_command`: `lofipipe features ROOT` is `lofipipe features list ROOT`."""

    def __init__(self, *args: Any, default_command: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.default_command = default_command

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = [self.default_command, *args]
        return super().parse_args(ctx, args)

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The default command's options (they are this group's, without a command
        name), then the commands."""
        default = self.commands[self.default_command]
        records = [
            record
            for param in default.get_params(ctx)
            if isinstance(param, click.Option) and (record := param.get_help_record(ctx))
        ]
        with formatter.section(f"Options (of {self.default_command}, the default)"):
            formatter.write_dl(records)
        self.format_commands(ctx, formatter)


@main.group(
    cls=DefaultCommandGroup, default_command="list", subcommand_metavar="ROOT | COMMAND [ARGS]..."
)
def features():
    """Feature sets under ROOT/features/: list them (the default), or import feature
    files made by other tools (ActionFormer, OpenTAD) as one.

    \b
    Examples:
      lofipipe features out/
      lofipipe features list s3://bucket/anet
      lofipipe features import out/ --from data/thumos/i3d_features --format actionformer \\
          --fps 30 --stride 4 --frames 16
    """


@features.command(name="list")
@click.argument("root")
@common_options
def list_feature_sets(root, config, storage_options):
    """List the feature sets under ROOT/features/ with their lineage, counts and sizes.

    \b
    Examples:
      lofipipe features list out/
      lofipipe features out/
    """
    from lofipipe.data.features import list_features, origin_of, preprocess_preset_of

    found = list_features(Store(root, storage_options))
    for item in found:
        click.echo(
            f"{item['fingerprint']}  {item['encoder']:14s} {item['videos']:6d} videos "
            f"{item['bytes'] / 2**20:9.1f} MiB  weights {item['weights']}  schedule "
            f"{item['schedule']}  preprocess {preprocess_preset_of(item)}  "
            f"{origin_of(item)}"
        )
    click.echo(f"{len(found)} feature sets")


@features.command(name="import")
@click.argument("root")
@click.option(
    "--from",
    "source",
    help="Folder URL of per-video feature files: <video_id>.npy, .npz or .pt, one (T, C) "
    "array each.",
)
@click.option(
    "--format",
    "file_format",
    type=click.Choice(["actionformer", "opentad", "npy"]),
    help="Whose layout the files follow (default npy): actionformer and npy hold (T, C) "
    "arrays; opentad also (C, T) ones, told apart by the video's duration.",
)
@click.option("--fps", type=float, help="Frames per second the features were sampled at.")
@click.option("--stride", type=int, help="Frames between consecutive snippets (feat_stride).")
@click.option("--frames", type=int, help="Frames per snippet (num_frames).")
@click.option(
    "--offset",
    type=float,
    help="Frames before the first snippet's first frame (default 0; OpenTAD's "
    "offset_frames is the first snippet's centre: pass offset_frames - frames/2).",
)
@common_options
def import_features(
    root, source, file_format, fps, stride, frames, offset, config, storage_options
):
    """Import per-video feature files made by other tools as a feature set under
    ROOT/features/<fingerprint>/, for train --mode head --features and eval.

    ROOT must hold an ingested manifest: it names the videos and their durations. Snippet
    i of a file spans (offset + i*stride)/fps seconds plus frames/fps. A video without a
    file, a file for no video of the manifest, and a file that is unreadable or does not
    fit its video's duration are reported with a reason; the other videos are imported.
    The fingerprint hashes the files and the time parameters, so importing the same files
    again does nothing.

    \b
    Examples:
      lofipipe features import out/ --from data/thumos/i3d_features --format actionformer \\
          --fps 30 --stride 4 --frames 16
      lofipipe features import s3://bucket/thumos --from s3://bucket/opentad/i3d \\
          --format opentad --fps 30 --stride 4 --frames 16 --offset 0
    """
    from lofipipe.pipeline.import_features import run_import

    config = _with_options(
        config,
        "feature_import",
        source=source,
        format=file_format,
        fps=fps,
        stride=stride,
        frames=frames,
        offset=offset,
    )
    store = Store(root, storage_options)
    _echo_summary(run_import(config, store, storage_options, _command_line()), store)


@main.command()
@click.argument("root")
@click.option("--fidelity", required=True, help="Fidelity name, e.g. full or t-lofi.")
@click.option("--video", "video_id", help="Video id (default: the first one).")
@click.option("--out", required=True, help="PNG file to write (any storage URL).")
@click.option("--rows", default=12, show_default=True, help="Snippets to show.")
@common_options
def inspect(root, fidelity, video_id, out, rows, config, storage_options):
    """Write a contact sheet of one video's snippets at one fidelity: a row per snippet,
    a column per frame, captions with times and the annotated action, if any.

    \b
    Examples:
      lofipipe inspect out/ --fidelity full --out sheet.png
      lofipipe inspect out/ --fidelity t-lofi --video synth_0003 --out t.png --rows 8
    """
    from lofipipe.data.snippets import SnippetReader
    from lofipipe.reports.contact_sheet import contact_sheet

    reader = SnippetReader(Store(root, storage_options), fidelity)
    video = next(reader.videos({video_id} if video_id else None), None)
    if video is None:
        raise InputError(f"no snippets of video {video_id!r} at fidelity {fidelity!r}")
    sheet = contact_sheet(video, reader.label_names(), rows)
    parent, _, name = out.rpartition("/")
    with Store(parent or ".", storage_options).writer(name) as handle:
        sheet.save(handle, format="PNG")
    click.echo(
        f"wrote {out}: video {video.video_id}, {len(video.start)} snippets of "
        f"{video.frames.shape[1]} frames at {video.frames.shape[-1]} px"
    )


def _run_train(config: Config, root: Store, storage_options: dict, command: str) -> None:
    from lofipipe.pipeline.train import run_train

    _echo_summary(run_train(config, root, storage_options, command), root)


def _run_recipe(config: Config, root: Store, storage_options: dict, command: str) -> None:
    from lofipipe.pipeline.recipe import run_lofi_recipe

    _echo_summary(run_lofi_recipe(config, root, storage_options, command), root)


@main.command()
@click.argument("root")
@click.option(
    "--mode",
    type=click.Choice(["head", "lofi", "losa"]),
    help="head: the TAL head on extracted features; lofi: encoder and head end to "
    "end on the schedule's reduced-fidelity shards; losa: a frozen ViT's LoSA "
    "adapters and the head on the full-fidelity shards.",
)
@click.option("--features", help="head: feature fingerprint (lofipipe features lists them).")
@click.option("--schedule", help="lofi, losa: the schedule the shards were materialized with.")
@click.option("--encoder", help="lofi, losa: encoder name (tiny, tsm_r18, ..., vit_s, ...).")
@click.option("--checkpoint", help="lofi, losa: the encoder's starting weights (any URL).")
@click.option(
    "--recipe",
    type=click.Choice(["lofi"]),
    help="lofi: LoFi end to end (runs NAME-lofi), full-fidelity features from the "
    "adapted encoder, then a head from scratch on them (NAME-head).",
)
@click.option("--run", "run_name", help="Run name: outputs go to ROOT/runs/NAME/.")
@click.option("--workers", type=int, help="Data-parallel Ray Train workers (default 1).")
@click.option("--epochs", type=int, help="Training epochs (default 30).")
@common_options
def train(
    root,
    mode,
    features,
    schedule,
    encoder,
    checkpoint,
    recipe,
    run_name,
    workers,
    epochs,
    config,
    storage_options,
):
    """Train on Ray Train workers: the TAL head on features (--mode head), or an encoder
    and the head end to end on reduced-fidelity snippet shards (--mode lofi). AdamW with
    warm-up and cosine decay, the validation mAP after every epoch, a checkpoint after
    every epoch.

    Writes ROOT/runs/NAME/{config.yaml, checkpoints/, metrics.parquet, predictions.json,
    report.png}, and in lofi mode the adapted encoder.pt that extract --checkpoint loads.
    A worker that dies restarts the workers from the newest checkpoint, and rerunning the
    same command resumes the run.

    \b
    Examples:
      lofipipe train out/ --mode head --features 3f2a9c0d1e4b5a6c --run r1 --workers 2
      lofipipe train s3://bucket/anet --mode head --features 3f2a9c0d1e4b5a6c --run r1 \\
          --set train.lr=1e-4 --set train.tiou=0.3:0.7:0.1
      lofipipe train out/ --mode lofi --schedule lofi-anet --encoder tsm_r18 \\
          --checkpoint s3://bucket/ckpt/tsm_r18_k400.pth --run lofi1 --workers 4
      lofipipe train out/ --recipe lofi --schedule lofi-anet --encoder tsm_r18 \\
          --checkpoint s3://bucket/ckpt/tsm_r18_k400.pth --run anet
    """
    config = _with_options(
        config,
        "train",
        mode=mode,
        features=features,
        encoder=encoder,
        checkpoint=checkpoint,
        run=run_name,
        workers=workers,
        epochs=epochs,
    )
    config = _with_options(config, "materialize", schedule=schedule)
    store = Store(root, storage_options)
    if recipe:
        _run_recipe(config, store, storage_options, _command_line())
    else:
        _run_train(config, store, storage_options, _command_line())


@main.command()
@click.option("--schedule", required=True, help="Preset or schedule .yaml file.")
@click.option("--encoder", required=True, help="Encoder name (tiny, tsm_r18, ..., vit_s, ...).")
@click.option("--mode", type=click.Choice(["lofi", "losa", "head"]), required=True)
@click.option(
    "--budget-gb",
    type=float,
    required=True,
    help="Memory for one training step: GPU memory, or process memory on CPU.",
)
@click.option("--max-batch", default=256, show_default=True, help="Largest batch to try.")
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    help="Data-parallel workers the run will train with (default: train.workers); "
    "each worker's share of a batch is measured.",
)
@click.option(
    "--write",
    "out",
    help="Write the schedule with these batch sizes to this YAML file (any storage URL).",
)
@common_options
def plan(schedule, encoder, mode, budget_gb, max_batch, workers, out, config, storage_options):
    """Measure the peak memory of real training steps on this machine and print the largest
    batch per fidelity that fits the budget (CUDA peak allocation on a GPU; on CPU the
    peak resident memory of a fresh process per step). The step is the one training
    runs: one worker's share of the batch, with train.activation_checkpointing and
    train.precision; the budget is capped by the memory free on the device.

    \b
    Examples:
      lofipipe plan --schedule lofi-anet --encoder tsm_r18 --mode lofi --budget-gb 40
      lofipipe plan --schedule lofi-anet --encoder tsm_r18 --mode lofi --budget-gb 40 \\
          --workers 4 --set train.activation_checkpointing=true
      lofipipe plan --schedule demo --encoder tiny --mode lofi --budget-gb 1 \\
          --write demo-planned.yaml
    """
    import torch

    from lofipipe.models.precision import resolve_precision
    from lofipipe.schemas.schedule import load_schedule
    from lofipipe.training.memory_plan import (
        StepSettings,
        device_free_bytes,
        plan_fidelity,
        planned_schedule_yaml,
    )

    chosen = load_schedule(schedule)
    workers = workers or config.train.workers
    gpu = torch.cuda.is_available()
    settings = StepSettings(
        config.train.activation_checkpointing, resolve_precision(config.train.precision, gpu)
    )
    budget = min(int(budget_gb * 2**30), device_free_bytes())
    device = torch.cuda.get_device_name() if gpu else "CPU"
    click.echo(
        f"{mode} steps of {encoder} on {device}, {settings.precision}"
        f"{', activation checkpointing' if settings.recompute else ''}, {workers} "
        f"worker{'s' if workers > 1 else ''}, budget {budget / 2**30:.3g} GiB per worker"
        + (f" (capped from {budget_gb:g} by the free memory)" if budget < budget_gb * 2**30 else "")
    )
    plans, measured = [], 0
    started = time.monotonic()
    for fidelity in chosen.training_fidelities(mode):

        def report(share, peak, name=fidelity.name):
            if peak is None:
                verdict = "out of memory"
            else:
                verdict = f"{peak / 2**30:.3f} GiB {'fits' if peak <= budget else 'over'}"
            click.echo(f"  {name} {share} video(s) per worker: {verdict}", err=True)

        plans.append(
            plan_fidelity(
                mode,
                encoder,
                fidelity,
                budget,
                config.train.head,
                max_batch,
                report,
                settings,
                workers,
            )
        )
        measured += len(plans[-1].measured)
    click.echo(f"{'fidelity':<10} {'shape':<14} {'batch':>5}  {'peak GiB':>8}")
    for item in plans:
        f = item.fidelity
        click.echo(
            f"{f.name:<10} {f'{f.snippets}x{f.frames}x{f.size}':<14} "
            f"{item.batch_size:>5}  {item.peak_bytes / 2**30:8.3f}"
            + ("  (not even one video a worker fits)" if not item.batch_size else "")
        )
    click.echo(f"{measured} steps measured in {time.monotonic() - started:.1f} s")
    if out:
        header = (
            f"# {_command_line()}\n# batch sizes measured on {device} for a "
            f"{budget_gb:g} GiB budget per worker ({mode}, {encoder}, {workers} workers, "
            f"{settings.precision}, checkpointing {'on' if settings.recompute else 'off'})\n"
        )
        parent, _, name = out.rpartition("/")
        Store(parent or ".", storage_options).write_text(
            name, planned_schedule_yaml(chosen, plans, header)
        )
        click.echo(f"wrote {out}")


@main.command()
@click.argument("root")
@common_options
def status(root, config, storage_options):
    """Show what ROOT holds, stage by stage: done, pending and failed videos with their
    reasons, the feature sets with their lineage, and the runs with their best mAP.

    \b
    Examples:
      lofipipe status out/
      lofipipe status s3://bucket/anet
    """
    from lofipipe.pipeline.status import root_status

    for line in root_status(Store(root, storage_options)).lines:
        click.echo(line)


@main.command(name="run")
@click.option(
    "--dry-run",
    is_flag=True,
    help="Print each step, what is done and what would "
    "run, and the estimated work; change nothing.",
)
@common_options
def run_recipe(dry_run, config, storage_options):
    """Run the whole graph of a recipe file (--config): ingest, materialize, extract, train
    (head, lofi or losa, per job.recipe), regenerate features, evaluate.

    A rerun after a crash continues where the job stopped: committed work is skipped and
    training resumes from its newest checkpoint.

    \b
    Examples:
      lofipipe run --config lofipipe/recipes/demo.yaml --dry-run
      lofipipe run --config lofipipe/recipes/anet-lofi.yaml --storage-option endpoint_url=http://...
    """
    from lofipipe.pipeline.job import plan_job, run_job

    if dry_run:
        steps = plan_job(config, storage_options)
        width = max(len(step.name) for step in steps)
        for step in steps:
            click.echo(f"{step.name:<{width}}  {step.state:<11}  {step.work}")
        return
    _echo_summary(
        run_job(config, storage_options, _command_line()), Store(config.job.root, storage_options)
    )


@main.command()
@click.argument("videos")
@click.option(
    "--model",
    "model_url",
    required=True,
    help="A model bundle: a head run's ROOT/runs/NAME/model (any storage URL).",
)
@click.option(
    "--out",
    "out_url",
    default="detections",
    show_default=True,
    help="Folder for detections.json/.csv/.html (a lofipipe ROOT: its manifest holds the "
    "videos' probes; any storage URL).",
)
@click.option("--min-score", type=float, default=0.0, show_default=True)
@click.option(
    "--top", type=click.IntRange(min=0), default=0, help="Detections kept per video (0: all)."
)
@click.option(
    "--keep-features",
    is_flag=True,
    help="Keep the features computed on the way as a feature set of the --out ROOT.",
)
@common_options
def detect(videos, model_url, out_url, min_score, top, keep_features, config, storage_options):
    """Detect actions in new, unlabelled VIDEOS (a folder, a glob, one file or a .txt
    list of them, any storage) with a trained model bundle: probe, decode straight from
    the videos, encode with the bundle's encoder (Ray actors, GPUs where there are some),
    run its head and soft-NMS, and write detections.json (ActivityNet result format),
    detections.csv and detections.html (a timeline per video). Bad videos are listed with
    their reasons; a rerun with the same videos and bundle redoes nothing. For one file
    the top detections are printed too.

    \b
    Examples:
      lofipipe detect new-videos/ --model out/runs/demo-head/model --out found/
      lofipipe detect clip.mp4 --model s3://bucket/anet/runs/r-head/model --top 5
    """
    from lofipipe.pipeline.detect import run_detect

    out = Store(out_url, storage_options)
    summary = run_detect(
        config,
        out,
        videos,
        model_url,
        storage_options,
        _command_line(),
        min_score,
        top,
        keep_features,
    )
    for stage in summary.stages:
        _echo_summary(stage, out)
    _echo_summary(summary, out)


@main.command(name="eval")
@click.option(
    "--gt",
    "gt_url",
    required=True,
    help="Ground truth: a .json in ActivityNet-1.3, ActionFormer or OpenTAD layout, THUMOS-14 "
    "<Class>_<subset>.txt files (folder or glob), or a lofipipe annotations.parquet.",
)
@click.option(
    "--pred",
    "pred_url",
    required=True,
    help="Predictions: a .json in ActivityNet result format (results -> video -> [{segment, "
    "label, score}]; OpenTAD's result_detection.json), or ActionFormer's eval_results.pkl. "
    "Integer labels are named by the ground truth's label ids; --metric ar also reads "
    "proposals, entries without a label.",
)
@click.option("--subset", help="Evaluate only this subset's videos, e.g. validation.")
@click.option(
    "--metric",
    type=click.Choice(["map", "ar", "recall"]),
    default="map",
    show_default=True,
    help="map: ActivityNet detection mAP; ar: ActivityNet proposal average recall AR@AN "
    "(labels ignored) and the AUC of the AR-AN curve; recall: Ego4D moment queries' "
    "Recall@kx (per class).",
)
@click.option(
    "--tiou",
    help="tIoU thresholds: start:stop:step (stop included) or a comma list "
    "(default 0.5:0.95:0.05, for recall 0.1,0.3,0.5; THUMOS-14: 0.3:0.7:0.1).",
)
@click.option(
    "--k",
    "multipliers",
    metavar="K,K",
    help="--metric recall: the k of Recall@kx, the top k times as many predictions of a "
    "class as the video has instances of it (default 1,5).",
)
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
)
@click.option("--per-class", is_flag=True, help="--metric map, table format: also AP per class.")
@common_options
def evaluate(
    gt_url,
    pred_url,
    subset,
    metric,
    tiou,
    multipliers,
    output_format,
    per_class,
    config,
    storage_options,
):
    """Score temporal detections against ground truth: ActivityNet detection mAP per tIoU
    threshold, their average and per class (the default); ActivityNet proposal average
    recall at 1, 5, 10 and 100 proposals per video and the area under its AR-AN curve
    (--metric ar); or Ego4D moment queries' Recall@1x and @5x (--metric recall).

    \b
    Examples:
      lofipipe eval --gt activity_net.v1-3.min.json --pred predictions.json \\
          --subset validation
      lofipipe eval --gt thumos14/annotations/ --pred out/runs/r1/predictions.json \\
          --subset test --tiou 0.3:0.7:0.1 --format json
      lofipipe eval --gt activity_net.v1-3.min.json --pred proposals.json \\
          --subset validation --metric ar
      lofipipe eval --gt ego4d_v2_220429.json --pred result_detection.json \\
          --subset val --metric recall --k 1,5 --tiou 0.1,0.3,0.5
    """
    import json

    from lofipipe.evaluation.detection import ANET_TIOU, parse_thresholds
    from lofipipe.evaluation.detection import evaluate as detection_map
    from lofipipe.evaluation.files import match_predictions, read_ground_truth, read_predictions
    from lofipipe.evaluation.proposals import (
        EGO4D_KX,
        EGO4D_TIOU,
        average_recall,
        parse_multipliers,
        recall_at_kx,
    )

    if per_class and metric != "map":
        raise click.UsageError("--per-class is for --metric map")
    if multipliers is not None and metric != "recall":
        raise click.UsageError("--k is for --metric recall")
    default_tiou = EGO4D_TIOU if metric == "recall" else ANET_TIOU
    thresholds = parse_thresholds(tiou) if tiou else default_tiou
    ks = parse_multipliers(multipliers) if multipliers else EGO4D_KX
    truth = read_ground_truth(gt_url, storage_options, subset)
    found = read_predictions(pred_url, storage_options, need_labels=metric != "ar")
    predictions = match_predictions(found, truth)
    if metric == "ar":
        result = average_recall(truth.segments, predictions, thresholds)
    elif metric == "recall":
        result = recall_at_kx(truth.segments, predictions, thresholds, ks)
    else:
        result = detection_map(truth.segments, predictions, thresholds)
    if output_format == "json":
        formats = {"ground_truth_format": truth.format, "predictions_format": found.format}
        click.echo(json.dumps({**formats, **result.to_dict()}, indent=1))
        return
    labels = {segment.label for segment in truth.segments}
    outside = sum(p.video_id not in truth.videos for p in predictions)
    ignored = sum(p.label not in labels for p in predictions)
    # What a prediction the ground truth cannot match does to each metric.
    outside_effect = {
        "map": "false positives",
        "ar": "counted in the proposal budget",
        "recall": "never retrieve",
    }[metric]
    click.echo(f"ground truth: {truth.format}; predictions: {found.format}")
    click.echo(
        f"{len(truth.videos)} videos, {len(truth.segments)} ground-truth segments of "
        f"{len(labels)} classes, {len(predictions)} predictions"
        + (f" ({outside} for videos outside the ground truth: {outside_effect})" if outside else "")
        + (
            f" ({ignored} of labels not in the ground truth: ignored)"
            if ignored and metric != "ar"
            else ""
        )
        + (" (scored as proposals: labels ignored)" if metric == "ar" else "")
    )
    click.echo(result.table(per_class) if metric == "map" else result.table())


@main.command(name="report")
@click.argument("root")
@click.option("--run", "run_name", required=True, help="The run under ROOT/runs/.")
@common_options
def report(root, run_name, config, storage_options):
    """Write (again) a run's report page, ROOT/runs/RUN/report.html: loss and learning-rate
    curves, mAP per tIoU and per class, stage throughput, errors, a snippet contact sheet
    and the resolved config, in one self-contained file. Training writes it already.

    \b
    Examples:
      lofipipe report lofipipe-demo/root --run demo-head
    """
    from lofipipe.reports.run_page import write_run_page

    click.echo(f"report: {write_run_page(Store(root, storage_options), run_name)}")


DEMO_RECIPE = str(Path(__file__).parent / "recipes" / "demo.yaml")


@main.command()
@click.argument("directory", default="lofipipe-demo")
@common_options(default_config=DEMO_RECIPE)
def demo(directory, config, storage_options):
    """Run the whole graph on a synthetic dataset it makes in DIRECTORY: the demo recipe
    (ingest, materialize, extract, the LoFi recipe, evaluation), then point to the report.

    Needs no setup: a local Ray, local storage. DIRECTORY/dataset holds the synthetic
    videos and annotations, DIRECTORY/root everything lofipipe produces; the recipe's
    job.root, job.videos and job.annotations are set to them. A rerun continues the job.

    \b
    Examples:
      lofipipe demo
      lofipipe demo /tmp/demo --set synth.videos=8 --set train.epochs=10
    """
    from lofipipe.pipeline.job import run_job

    started = time.monotonic()
    base = Store(directory, storage_options)
    dataset, root = base.child("dataset"), base.child("root")
    command = _command_line()
    click.echo(f"== synth -> {dataset.url}")
    _run_synth(config, dataset, command)
    config = config_with(
        config,
        job={
            "root": root.url,
            "videos": dataset.url_of("videos"),
            "annotations": dataset.url_of("annotations.json"),
        },
    )
    click.echo(f"== {config.job.recipe} recipe -> {root.url}")
    summary = run_job(config, storage_options, command)
    _echo_summary(summary, root)
    click.echo(
        f"demo finished in {time.monotonic() - started:.1f} s; the run's report: "
        f"{root.url_of(report_path(summary.run))}"
    )


if __name__ == "__main__":  # pragma: no cover
    main()
