"""The LoFi paper's claim on the synthetic dataset, side by side in one run.

    .venv/bin/python bench/lofi_claim_bench.py [--seeds 3] [--videos 24]

An encoder (`tiny`) is first trained for action classification on trimmed clips: the
full-fidelity snippets of the training videos that lie inside an action, labelled with
its class. Then, for each seed:
  (a) frozen: features extracted with that encoder, and the TAL head trained on them;
  (b) LoFi: the recipe from the same encoder (stage 2 end to end at reduced fidelities,
      full-fidelity features from the adapted encoder, stage 3 a head from scratch).
Both heads are trained alike and scored on the validation videos; the table gives their
mAP per seed and the mean. The expectation, not a promise: (b) beats (a).
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))

from lofipipe.cli import main as cli  # noqa: E402
from lofipipe.data.annotations import AnnotationIndex  # noqa: E402
from lofipipe.data.features import list_features  # noqa: E402
from lofipipe.data.snippets import SnippetReader  # noqa: E402
from lofipipe.models.registry import build_encoder  # noqa: E402
from lofipipe.storage import Store  # noqa: E402

HEAD = [
    "--set",
    "train.batch_size=2",
    "--set",
    "train.warmup_epochs=2",
    "--set",
    "train.head.dim=128",
    "--set",
    "train.epochs=30",
]


def _cli(*words) -> None:
    cli([str(word) for word in words], standalone_mode=False)


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


def pretrain(root: Store, seed: int, epochs: int) -> tuple[bytes, float]:
    """`tiny` trained to classify trimmed clips; its checkpoint and training accuracy."""
    clips, labels = trimmed_clips(root)
    torch.manual_seed(seed)
    encoder = build_encoder("tiny")
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
    with torch.no_grad():
        accuracy = float((classifier(encoder(clips)).argmax(1) == labels).float().mean())
    buffer = io.BytesIO()
    torch.save({"encoder": encoder.net.state_dict()}, buffer)
    return buffer.getvalue(), accuracy


def _last_epoch(root: Store, run: str) -> tuple[float, float]:
    rows = root.read_table(f"runs/{run}/metrics.parquet").to_pylist()
    last = [r for r in rows if r["kind"] == "epoch"][-1]
    return last["val_map"][0], last["val_average_map"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--videos", type=int, default=24)
    parser.add_argument("--pretrain-epochs", type=int, default=30)
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    logging.getLogger("ray").setLevel(logging.ERROR)
    results = []
    with tempfile.TemporaryDirectory() as scratch:
        base = Path(scratch)
        _cli("synth", base / "data", "--videos", args.videos)
        _cli(
            "ingest",
            base / "root",
            "--videos",
            base / "data/videos",
            "--annotations",
            base / "data/annotations.json",
        )
        _cli("materialize", base / "root", "--schedule", "demo")
        root = Store(str(base / "root"))
        for seed in range(args.seeds):
            checkpoint, accuracy = pretrain(root, seed, args.pretrain_epochs)
            root.write_bytes(f"pretrained-{seed}.pth", checkpoint)
            weights = root.url_of(f"pretrained-{seed}.pth")
            seeds = ["--set", f"train.seed={seed}"]
            _cli(
                "extract",
                root.url,
                "--encoder",
                "tiny",
                "--schedule",
                "demo",
                "--checkpoint",
                weights,
            )
            features = next(
                item["fingerprint"]
                for item in list_features(root)
                if (item["checkpoint"] or "").endswith(f"pretrained-{seed}.pth")
            )
            _cli(
                "train",
                root.url,
                "--mode",
                "head",
                "--features",
                features,
                "--run",
                f"frozen-{seed}",
                *HEAD,
                *seeds,
            )
            _cli(
                "train",
                root.url,
                "--recipe",
                "lofi",
                "--schedule",
                "demo",
                "--encoder",
                "tiny",
                "--checkpoint",
                weights,
                "--run",
                f"lofi-{seed}",
                *HEAD,
                *seeds,
                "--set",
                "train.encoder_epochs=10",
            )
            results.append(
                (
                    seed,
                    accuracy,
                    _last_epoch(root, f"frozen-{seed}"),
                    _last_epoch(root, f"lofi-{seed}-head"),
                )
            )
    print(
        f"\nLoFi on the synthetic dataset ({args.videos} videos, demo schedule, tiny "
        f"pretrained for classification on trimmed clips), validation mAP (%)"
    )
    print(
        f"{'seed':>4}  {'clip acc':>8}  {'(a) frozen @0.5 / avg':>22}  {'(b) LoFi @0.5 / avg':>20}"
    )
    for seed, accuracy, frozen, lofi in results:
        print(
            f"{seed:>4}  {100 * accuracy:8.1f}  {100 * frozen[0]:12.2f} / {100 * frozen[1]:6.2f}"
            f"  {100 * lofi[0]:10.2f} / {100 * lofi[1]:6.2f}"
        )
    frozen = np.array([r[2] for r in results]) * 100
    lofi = np.array([r[3] for r in results]) * 100
    print(
        f"mean  {'':8}  {frozen[:, 0].mean():12.2f} / {frozen[:, 1].mean():6.2f}"
        f"  {lofi[:, 0].mean():10.2f} / {lofi[:, 1].mean():6.2f}"
    )
    print(
        f"(b) - (a), average mAP: {lofi[:, 1].mean() - frozen[:, 1].mean():+.2f} points "
        f"(std over seeds: (a) {frozen[:, 1].std():.2f}, (b) {lofi[:, 1].std():.2f})"
    )


if __name__ == "__main__":
    main()
