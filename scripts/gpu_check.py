"""The GPU paths that CPU-only CI cannot run, checked on a real GPU: one line per check.

    bash scripts/gpu_check.sh            # on a machine with a CUDA GPU (under 10 minutes)
    bash scripts/gpu_check.sh --cpu      # the same checks on the CPU: a smoke run of this
                                         # script (no CUDA memory figures)

1. extract with tsm_r50 and with vit_b (bf16 on a GPU): finite features, the precision in
   the fingerprint's lineage;
2. a LoFi step of tsm_r18 in bf16 and in fp16 (with loss scaling): finite loss, encoder
   gradients that reach it (the share that is exactly zero), the step's peak memory;
3. a LoSA step of vit_b with activation checkpointing: the frozen backbone runs once per
   chunk, the peak against the step without checkpointing;
4. a LoFi training run killed with SIGKILL after its first checkpoint, then rerun: it
   resumes (optimizer state on the device) and finishes;
5. `lofipipe plan`'s figure for a LoFi step of tsm_r18, with and without checkpointing,
   beside the peak of the same step as the trainer runs it;
6. h264 shards decoded on the GPU's video decoder (NVDEC, `train.shard_decoder gpu`):
   frames within one level of the CPU decoder's, and the frames per second of each.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import yaml

from lofipipe.data.annotations import AnnotationIndex
from lofipipe.data.features import list_features, read_features
from lofipipe.data.snippets import SnippetReader
from lofipipe.evaluation.detection import parse_thresholds
from lofipipe.models.registry import LOSA_CHUNK, build_encoder, encoder_preprocess
from lofipipe.models.tal_head import TALHead
from lofipipe.schemas.config import HeadConfig, config_to_dict, load_config
from lofipipe.schemas.schedule import PRESETS, Fidelity
from lofipipe.storage import Store
from lofipipe.training.lofi_trainer import LofiTrainer
from lofipipe.training.memory_plan import StepSettings, step_peak_bytes, synthetic_video
from lofipipe.training.snippet_detector import SnippetDetector
from lofipipe.training.trainer import TrainJob, head_losses, optimizer_step

HEAD = HeadConfig(dim=64, levels=3)
failures: list[str] = []


def check(name: str, run: Callable[[], str]) -> None:
    """Runs one check and prints `PASS name: details` or `FAIL name: error`."""
    started = time.perf_counter()
    try:
        details = run()
    except Exception as error:  # noqa: BLE001 - every check reports, the next one runs
        failures.append(name)
        print(f"FAIL {name}: {type(error).__name__}: {error}", flush=True)
        return
    print(f"PASS {name}: {details} ({time.perf_counter() - started:.1f} s)", flush=True)


def _cli(*words) -> str:
    """A lofipipe command in a subprocess (its own Ray); its output."""
    done = subprocess.run(
        [sys.executable, "-m", "lofipipe.cli", *map(str, words)], capture_output=True, text=True
    )
    if done.returncode != 0:
        raise RuntimeError((done.stderr.strip().splitlines() or ["no output"])[-1])
    return done.stdout


def _peak(device: torch.device, step: Callable[[], object]) -> str:
    """Runs `step`; its peak CUDA allocation, or a note on CPU."""
    if device.type != "cuda":
        step()
        return "peak n/a on CPU"
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    step()
    torch.cuda.synchronize()
    return f"peak {(torch.cuda.max_memory_allocated() - before) / 2**20:.0f} MiB"


def dataset(base: Path, schedules: dict[str, tuple[Path | str, str]]) -> dict[str, Path]:
    """4 synthetic videos, ingested once per (schedule, preprocessing) and materialized;
    the ROOTs."""
    data = base / "data"
    _cli("synth", data, "--videos", 4, "--seconds", 20)
    roots = {}
    for name, (schedule, preprocess) in schedules.items():
        root = base / f"root-{name}"
        _cli(
            "ingest", root, "--videos", data / "videos", "--annotations", data / "annotations.json"
        )
        _cli(
            "materialize",
            root,
            "--schedule",
            schedule,
            "--set",
            f"materialize.preprocess={preprocess}",
        )
        roots[name] = root
    return roots


def extract(root: Path, encoder: str, schedule: Path | str, gpus: str) -> str:
    _cli("extract", root, "--encoder", encoder, "--schedule", schedule, "--gpus", gpus)
    (item,) = [f for f in list_features(Store(str(root))) if f["encoder"] == encoder]
    values = read_features(Store(str(root)), item["fingerprint"])
    matrix = np.concatenate([v[0] for v in values.values()])
    assert np.isfinite(matrix).all(), "features are not finite"
    lineage = json.loads((root / "features" / item["fingerprint"] / "lineage.json").read_text())
    return f"{len(values)} videos, {matrix.shape[1]}-d, precision {lineage['precision']}"


def lofi_step(device: torch.device, precision: str, schedule: str) -> str:
    torch.manual_seed(0)
    fidelity = PRESETS[schedule].fidelity("t-lofi")
    encoder = build_encoder("tsm_r18")
    model = SnippetDetector(encoder, TALHead.from_config(encoder.dim, 20, HEAD), False, precision)
    model.to(device)
    rng = np.random.default_rng(0)
    videos = [synthetic_video(fidelity, rng) for _ in range(2)]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    losses = []

    def step() -> None:
        output, batch = model(videos, HEAD.levels)
        loss, _ = head_losses(output, batch, 1)
        losses.append(loss.detach())
        optimizer_step(loss, model, optimizer, scaler, clip_grad_norm=1.0)

    peak = _peak(device, step)
    assert torch.isfinite(losses[0]), "the loss is not finite"
    grads = torch.cat([p.grad.flatten() for p in encoder.parameters() if p.grad is not None])
    assert torch.isfinite(grads).all() and grads.abs().sum() > 0, "no encoder gradient"
    zero = float((grads == 0).float().mean())
    return (
        f"loss {float(losses[0]):.3f}, {100 * zero:.1f}% of encoder gradients exactly 0, "
        f"grad scale {scaler.get_scale() if scaler.is_enabled() else 1.0:g}, {peak}"
    )


def losa_step(device: torch.device, precision: str, snippets: int) -> str:
    torch.manual_seed(0)
    video = synthetic_video(Fidelity("full", snippets, 16, 224), np.random.default_rng(0))
    chunks = -(-snippets // LOSA_CHUNK)
    peaks = {}
    for recompute in (False, True):
        encoder = build_encoder("vit_b", losa=True)
        head = TALHead.from_config(encoder.dim, 20, HEAD)
        model = SnippetDetector(encoder, head, recompute, precision).to(device)
        calls: list[int] = []
        encoder.net.backbone.blocks[0].register_forward_hook(
            lambda *_, calls=calls: calls.append(1)
        )

        def step(model: SnippetDetector = model) -> None:
            output, batch = model([video], HEAD.levels)
            head_losses(output, batch, 1)[0].backward()

        peaks[recompute] = _peak(device, step)
        assert len(calls) == chunks, f"backbone ran {len(calls)} times for {chunks} chunks"
    return (
        f"{snippets} snippets, backbone once per chunk; without checkpointing "
        f"{peaks[False]}, with {peaks[True]}"
    )


def kill_and_resume(root: Path, gpus: str) -> str:
    args = [
        *("train", root, "--mode", "lofi", "--schedule", "demo", "--encoder", "tsm_r18"),
        *("--run", "killed", "--gpus", gpus, "--set", "train.epochs=3", "--set", "train.lr=1e-3"),
    ]
    first = subprocess.Popen(
        [sys.executable, "-m", "lofipipe.cli", *map(str, args)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    checkpoints = root / "runs" / "killed" / "checkpoints"
    deadline = time.monotonic() + 300
    while not (checkpoints.exists() and any(checkpoints.glob("*.pt"))):
        assert first.poll() is None and time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.2)
    os.killpg(first.pid, signal.SIGKILL)  # the driver and its Ray, mid-run
    first.wait()
    output = _cli(*args)
    assert "resumed after epoch" in output, output
    return next(line for line in output.splitlines() if line.startswith("run killed"))


def plan_against_training(root: Path, device: torch.device, precision: str) -> str:
    schedule = PRESETS["demo"]
    fidelity = schedule.train[0]  # a long-cycle LoFi run's first epoch trains at it
    figures = []
    for recompute in (False, True):
        planned = step_peak_bytes(
            "lofi",
            "tsm_r18",
            fidelity,
            schedule.batch_size_for(fidelity),
            HEAD,
            StepSettings(recompute, precision),
        )
        settings = load_config(
            None,
            [
                *("train.mode=lofi", "train.encoder=tsm_r18", f"train.run=plan-{recompute}"),
                *("train.epochs=1", "train.head.dim=64", "train.head.levels=3"),
                f"train.activation_checkpointing={str(recompute).lower()}",
                f"train.precision={precision}",
            ],
        ).train
        store = Store(str(root))
        videos = AnnotationIndex(store).videos("training")
        trainer = LofiTrainer(
            TrainJob(
                store,
                settings.run,
                settings,
                videos,
                videos,
                parse_thresholds(settings.tiou),
                threads=4,
                schedule=schedule,
                preprocess=encoder_preprocess("tsm_r18"),
            ),
            wrap=lambda model: model.to(device),
            log=lambda line: None,
        )
        measured = _peak(device, trainer._train_epoch)
        mib = "n/a" if planned is None else f"{planned / 2**20:.0f} MiB"
        figures.append(
            f"checkpointing {'on' if recompute else 'off'}: planned {mib}, training {measured}"
        )
    return "; ".join(figures)


def shard_decoding(root: Path, device: str) -> str:
    """Every full-fidelity snippet of `root`'s h264 shards read on the CPU and on
    `device`'s video decoder."""
    videos, rates = {}, {}
    for where in ("cpu", device):
        reader = SnippetReader(Store(str(root)), "full", device=where)
        list(reader.videos())  # untimed: decoders start, pages come into the cache
        started = time.perf_counter()
        videos[where] = list(reader.videos())
        frames = sum(video.frames.shape[0] * video.frames.shape[1] for video in videos[where])
        rates[where] = frames / (time.perf_counter() - started)
    worst = max(
        int((a.frames.int() - b.frames.int()).abs().max())
        for a, b in zip(videos["cpu"], videos[device], strict=True)
    )
    assert worst <= 1, f"frames decoded on {device} are up to {worst} levels off the CPU's"
    return (
        f"{frames} frames, at most {worst} level apart; {rates['cpu']:.0f} frames/s on the "
        f"CPU's threads, {rates[device]:.0f} on {device}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="run the checks on the CPU")
    args = parser.parse_args()
    if not args.cpu and not torch.cuda.is_available():
        sys.exit("no CUDA GPU here: run with --cpu for a smoke run of the checks")
    device = torch.device("cpu" if args.cpu else "cuda")
    gpus = "off" if args.cpu else "on"
    name = "CPU" if args.cpu else torch.cuda.get_device_name()
    bf16 = "bf16" if args.cpu or torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"
    print(f"lofipipe GPU check on {name}, torch {torch.__version__}", flush=True)
    with tempfile.TemporaryDirectory() as scratch:
        base = Path(scratch)
        vit = dict(config_to_dict(PRESETS["demo"]))
        vit["name"] = "vit-check"
        vit["full"] = {**vit["full"], "frames": 16, "size": 224, "snippets": 16}
        vit_yaml = base / "vit-check.yaml"
        vit_yaml.write_text(yaml.safe_dump(vit, sort_keys=False))
        tsm = dict(config_to_dict(PRESETS["demo"]))
        tsm["name"] = "tsm-check"
        tsm["full"] = {**tsm["full"], "size": 224, "snippets": 16}
        tsm_yaml = base / "tsm-check.yaml"
        tsm_yaml.write_text(yaml.safe_dump(tsm, sort_keys=False))
        roots = dataset(
            base,
            {
                "tsm": (tsm_yaml, "tsm-test"),
                "vit": (vit_yaml, "videomaev2-tad"),
                "demo": ("demo", "tsm-test"),  # LoFi training of tsm_r18
            },
        )
        check("extract tsm_r50", lambda: extract(roots["tsm"], "tsm_r50", tsm_yaml, gpus))
        check("extract vit_b", lambda: extract(roots["vit"], "vit_b", vit_yaml, gpus))
        for precision in (bf16, "fp16"):
            check(
                f"lofi step {precision}",
                # fp16 on a CPU is emulated, slowly: the demo's small snippets there
                lambda p=precision: lofi_step(device, p, "demo" if args.cpu else "lofi-anet"),
            )
        snippets = 33 if args.cpu else 256  # two chunks / a 4-minute video at stride 1 s
        check("losa step, checkpointing", lambda: losa_step(device, bf16, snippets))
        check("kill and resume", lambda: kill_and_resume(roots["demo"], gpus))
        check(
            "plan against training",
            lambda: plan_against_training(roots["demo"], device, "fp32" if args.cpu else bf16),
        )
        check(
            "shard decoding on the GPU",
            lambda: shard_decoding(roots["tsm"], "cpu" if args.cpu else "cuda:0"),
        )
    print(f"{8 - len(failures)} of 8 checks passed", flush=True)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
