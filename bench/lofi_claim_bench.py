"""The LoFi paper's claim where adaptation can matter: an encoder moved to a new domain.

    .venv/bin/python bench/lofi_claim_bench.py [--seeds 3] [--videos 24] [--quick] [--out DIR]
        [--set train.encoder_lr_scale=1.0]

Two synthetic datasets share their motion classes but not their look: domain A
(`synth --domain a`, seed 0) and domain B (`synth --domain b`, seed 1: striped
backgrounds, a smaller dark disc, pixel noise, camera motion). Per seed, `tiny` is first
trained to classify trimmed clips of domain A (the full-fidelity snippets of its training
videos that lie inside an action, labelled with its class). Then, on domain B, with the
same head and head schedule (stage 3 of the recipe is the frozen run's head training):
  (a) frozen: features of B extracted with the domain-A encoder, and a TAL head on them;
  (b) LoFi: the recipe from that encoder (stage 2 end to end at the `demo` schedule's
      reduced fidelities, full-fidelity features from the adapted encoder, a head from
      scratch on them);
  (c) full fidelity: the same recipe with stage 2 end to end at the full fidelity (a
      schedule whose one training fidelity is the full one), the upper reference that
      LoFi approximates at a fraction of the memory.
Each head is scored once, after its last epoch, on B's validation videos, which nothing
is tuned on. The step memory of each is one real training step at the batch size it
trains with, measured by `lofipipe.training.memory_plan.step_peak_bytes` (as
bench/memory_bench.py does). The expectation, not a promise: (a) < (b) <= (c) in mAP,
and (b) well under (c) in memory.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))

from lofipipe.cli import main as cli  # noqa: E402
from lofipipe.data.annotations import AnnotationIndex  # noqa: E402
from lofipipe.data.features import list_features  # noqa: E402
from lofipipe.data.snippets import SnippetReader  # noqa: E402
from lofipipe.models.registry import build_encoder  # noqa: E402
from lofipipe.schemas.config import HeadConfig, config_to_dict  # noqa: E402
from lofipipe.schemas.schedule import PRESETS, Fidelity, Schedule  # noqa: E402
from lofipipe.storage import Store  # noqa: E402
from lofipipe.training.memory_plan import step_peak_bytes  # noqa: E402

HEAD_BATCH = 2
HEAD_DIM = 128
# The head's settings, the same for (a) and for stage 3 of (b) and (c): the demo recipe's
# (lofipipe/recipes/demo.yaml; its learning rate is also stage 2's, over
# train.encoder_lr_scale), without the default floor of 3500 steps
# (`--set train.min_steps=3500` restores it), which makes each head run four times longer.
HEAD = [
    *("--set", f"train.batch_size={HEAD_BATCH}"),
    *("--set", "train.warmup_epochs=2"),
    *("--set", "train.lr=1e-3"),
    *("--set", "train.min_steps=0"),
    *("--set", f"train.head.dim={HEAD_DIM}"),
]
ENCODER = "tiny"


def _cli(*words) -> None:
    cli([str(word) for word in words], standalone_mode=False)


def full_fidelity_schedule(schedule: Schedule) -> Schedule:
    """`schedule` with one training fidelity, of the same shape as its full one (a
    schedule's fidelities need distinct names, so it is called `full-e2e`)."""
    return dataclasses.replace(
        schedule,
        name=f"{schedule.name}-full",
        train=(dataclasses.replace(schedule.full, name="full-e2e"),),
    )


def prepare(base: Path, domain: str, seed: int, videos: int, schedule: str) -> Store:
    """Synthesizes a dataset of `domain`, ingests it and materializes `schedule` (a preset
    or a .yaml file); returns its ROOT."""
    data, root = base / f"data-{domain}", base / f"root-{domain}-{Path(schedule).stem}"
    if not (data / "annotations.json").exists():
        _cli("synth", data, "--videos", videos, "--domain", domain, "--seed", seed)
    _cli("ingest", root, "--videos", data / "videos", "--annotations", data / "annotations.json")
    _cli("materialize", root, "--schedule", schedule)
    return Store(str(root))


def trimmed_clips(root: Store) -> tuple[torch.Tensor, torch.Tensor]:
    """Full-fidelity snippets of training videos whose center lies inside an action."""
    annotations = AnnotationIndex(root)
    clips, labels = [], []
    for video in SnippetReader(root, "full").videos():
        if annotations.subsets.get(video.video_id) != "training":
            continue
        for (start, end), label in zip(video.segments, video.labels, strict=True):
            inside = (video.center >= start) & (video.center <= end)
            clips.append(video.frames[torch.from_numpy(inside)])
            labels += [int(label)] * int(inside.sum())
    return torch.cat(clips), torch.tensor(labels)


def pretrain(
    clips: torch.Tensor, labels: torch.Tensor, seed: int, epochs: int
) -> tuple[nn.Module, nn.Module]:
    """`tiny` and a linear classifier trained together to classify `clips`."""
    torch.manual_seed(seed)
    encoder = build_encoder(ENCODER)
    classifier = nn.Linear(encoder.dim, int(labels.max()) + 1)
    optimizer = torch.optim.AdamW([*encoder.parameters(), *classifier.parameters()], lr=2e-3)
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        for batch in np.array_split(rng.permutation(len(labels)), max(1, len(labels) // 16)):
            loss = nn.functional.cross_entropy(classifier(encoder(clips[batch])), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    encoder.eval()
    return encoder, classifier


def clip_accuracy(
    encoder: nn.Module, classifier: nn.Module, clips: torch.Tensor, labels: torch.Tensor
) -> float:
    """The fraction of `clips` the pretrained encoder and classifier label right."""
    with torch.no_grad():
        predicted = torch.cat([classifier(encoder(part)).argmax(1) for part in clips.split(64)])
    return float((predicted == labels).float().mean())


def _last_epoch(root: Store, run: str) -> tuple[float, float]:
    """mAP@0.5 and the average mAP (0.5:0.95) of a run's last epoch."""
    rows = root.read_table(f"runs/{run}/metrics.parquet").to_pylist()
    last = [r for r in rows if r["kind"] == "epoch"][-1]
    return last["val_map"][0], last["val_average_map"]


def step_memory(lofi: Schedule, full: Schedule) -> dict[str, int]:
    """Peak bytes of one training step of each setup, at the batch it trains with: the
    head on features (a, and stage 3 of b and c), and end to end at each of LoFi's
    reduced fidelities (b; the largest counts) and at the full fidelity (c)."""
    head = HeadConfig(dim=HEAD_DIM)
    on_features = step_peak_bytes("head", ENCODER, lofi.full, HEAD_BATCH, head)

    def end_to_end(schedule: Schedule, fidelity: Fidelity) -> int:
        return step_peak_bytes("lofi", ENCODER, fidelity, schedule.batch_size_for(fidelity), head)

    return {
        "a": on_features,
        "b": max(on_features, *(end_to_end(lofi, f) for f in lofi.train)),
        "c": max(on_features, end_to_end(full, full.train[0])),
    }


def _spread(values: np.ndarray) -> str:
    """Mean and sample standard deviation over seeds (the mean alone for one seed)."""
    if len(values) < 2:
        return f"{values.mean():+6.2f}"
    return f"{values.mean():+6.2f} +- {values.std(ddof=1):5.2f}"


def report(results: list[dict], memory: dict[str, int], args: argparse.Namespace) -> None:
    """Prints the table: per seed, mean and standard deviation over seeds, the paired
    gains, and the step memory."""
    setups = {"a": "(a) frozen", "b": "(b) LoFi", "c": "(c) full e2e"}
    print(
        f"\nLoFi under domain shift: tiny pretrained on domain A, adapted to and scored on "
        f"domain B ({args.videos} videos each); demo schedule, stage 2 {args.encoder_epochs} "
        f"epochs, heads {args.head_epochs} epochs"
        + (f"; {', '.join(args.set)}" if args.set else "")
    )
    print("validation mAP (%) on domain B after the last epoch, @0.5 / average 0.5:0.95")
    print(f"{'seed':>5}  {'clip acc A / B':>14}" + "".join(f"  {s:>16}" for s in setups.values()))
    scores = {s: 100 * np.array([row[s] for row in results]) for s in setups}
    for index, row in enumerate(results):
        print(
            f"{row['seed']:>5}  {100 * row['acc_a']:6.1f} / {100 * row['acc_b']:5.1f}"
            + "".join(f"  {scores[s][index, 0]:7.2f} / {scores[s][index, 1]:6.2f}" for s in setups)
        )
    summaries = [("mean", lambda v: v.mean(axis=0))]
    if len(results) > 1:
        summaries.append(("std", lambda v: v.std(axis=0, ddof=1)))
    for name, summary in summaries:
        print(
            f"{name:>5}  {'':14}"
            + "".join(
                f"  {summary(scores[s])[0]:7.2f} / {summary(scores[s])[1]:6.2f}" for s in setups
            )
        )
    print("paired gain over seeds (points), mean +- std: @0.5 / average")
    for better, worse in (("b", "a"), ("c", "a"), ("c", "b")):
        gain = scores[better] - scores[worse]
        print(f"  ({better}) - ({worse}): {_spread(gain[:, 0])} / {_spread(gain[:, 1])}")
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    print(f"step memory ({device}, one training step at the batch each trains with):")
    for setup, name in setups.items():
        print(
            f"  {name:<13} {memory[setup] / 2**20:8.1f} MiB  "
            f"{memory[setup] / memory['c']:6.3f}x of (c)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--videos", type=int, default=24, help="per domain")
    parser.add_argument("--pretrain-epochs", type=int, default=30)
    parser.add_argument("--encoder-epochs", type=int, default=10, help="stage 2 of (b), (c)")
    parser.add_argument("--head-epochs", type=int, default=30)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an override for every train command, e.g. train.encoder_lr_scale=0.3",
    )
    parser.add_argument(
        "--out",
        help="keep the datasets, ROOTs and runs here (a rerun resumes); default: a "
        "temporary folder, removed at the end",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: 1 seed, 8 videos per domain, few epochs",
    )
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.videos = 1, 8
        args.pretrain_epochs, args.encoder_epochs, args.head_epochs = 5, 2, 5
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    logging.getLogger("ray").setLevel(logging.ERROR)
    started = time.perf_counter()
    lofi = PRESETS["demo"]
    full = full_fidelity_schedule(lofi)
    overrides = [*HEAD, "--set", f"train.epochs={args.head_epochs}"]
    overrides += [word for pair in args.set for word in ("--set", pair)]
    results = []
    with tempfile.TemporaryDirectory() as scratch:
        base = Path(args.out or scratch)
        base.mkdir(parents=True, exist_ok=True)
        full_yaml = base / f"{full.name}.yaml"
        full_yaml.write_text(yaml.safe_dump(config_to_dict(full), sort_keys=False))
        root_a = prepare(base, "a", 0, args.videos, "demo")
        root_b = prepare(base, "b", 1, args.videos, "demo")
        # Stage 2 of (c) needs the full-fidelity schedule's shards: a ROOT of its own, as
        # one ROOT holds one schedule's shards per fidelity name.
        root_c = prepare(base, "b", 1, args.videos, str(full_yaml))
        clips_a, labels_a = trimmed_clips(root_a)
        clips_b, labels_b = trimmed_clips(root_b)
        for seed in range(args.seeds):
            encoder, classifier = pretrain(clips_a, labels_a, seed, args.pretrain_epochs)
            weights = base / f"pretrained-{seed}.pth"
            buffer = io.BytesIO()
            torch.save({"encoder": encoder.net.state_dict()}, buffer)
            weights.write_bytes(buffer.getvalue())
            seeds = ["--set", f"train.seed={seed}"]
            _cli(
                "extract",
                root_b.url,
                "--encoder",
                ENCODER,
                "--schedule",
                "demo",
                "--checkpoint",
                weights,
            )
            features = next(
                item["fingerprint"]
                for item in list_features(root_b)
                if (item["checkpoint"] or "").endswith(weights.name)
            )
            _cli(
                "train",
                root_b.url,
                "--mode",
                "head",
                "--features",
                features,
                "--run",
                f"frozen-{seed}",
                *overrides,
                *seeds,
            )
            for root, schedule, run in ((root_b, "demo", "lofi"), (root_c, full_yaml, "full")):
                _cli(
                    "train",
                    root.url,
                    "--recipe",
                    "lofi",
                    "--schedule",
                    schedule,
                    "--encoder",
                    ENCODER,
                    "--checkpoint",
                    weights,
                    "--run",
                    f"{run}-{seed}",
                    "--set",
                    f"train.encoder_epochs={args.encoder_epochs}",
                    *overrides,
                    *seeds,
                )
            results.append(
                {
                    "seed": seed,
                    "acc_a": clip_accuracy(encoder, classifier, clips_a, labels_a),
                    "acc_b": clip_accuracy(encoder, classifier, clips_b, labels_b),
                    "a": _last_epoch(root_b, f"frozen-{seed}"),
                    "b": _last_epoch(root_b, f"lofi-{seed}-head"),
                    "c": _last_epoch(root_c, f"full-{seed}-head"),
                }
            )
    memory = step_memory(lofi, full)
    report(results, memory, args)
    print(f"wall time: {(time.perf_counter() - started) / 60:.1f} min")


if __name__ == "__main__":
    main()
