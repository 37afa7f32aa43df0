"""Peak training-step memory per mode and fidelity, side by side in one run.

    .venv/bin/python bench/memory_bench.py [--snippets-tsm 24] [--snippets-vit 8]

Each figure is one real training step of one video (forward, backward, AdamW) measured by
`lofipipe.training.memory_plan.step_peak_bytes`: CUDA's peak allocation on a GPU, a fresh
process's peak resident memory on CPU. Rows: end-to-end training at full fidelity, at each
LoFi fidelity (the paper's reductions of the full one, keeping pixels per video constant),
LoSA (ViTs: frozen backbone without gradients, adapters and head), and the head alone on
features. The full fidelity has the LoFi paper's shape with fewer snippets per video, so
that end-to-end training fits this machine's memory; every row scales with the same L.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from lofipipe.models.registry import ENCODERS  # noqa: E402
from lofipipe.schemas.config import HeadConfig  # noqa: E402
from lofipipe.schemas.schedule import Fidelity  # noqa: E402
from lofipipe.training.memory_plan import step_peak_bytes  # noqa: E402


def lofi_fidelities(snippets: int, frames: int) -> list[Fidelity]:
    """Full fidelity (L@224) and the LoFi reductions: L@112, L/4@224, L/2@158."""
    return [
        Fidelity("full", snippets, frames, 224),
        Fidelity("s-lofi", snippets, frames, 112),
        Fidelity("t-lofi", max(1, snippets // 4), frames, 224),
        Fidelity("st-lofi", max(1, snippets // 2), frames, round(224 / math.sqrt(2))),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--snippets-tsm", type=int, default=24)
    parser.add_argument("--snippets-vit", type=int, default=8)
    args = parser.parse_args()
    head = HeadConfig(levels=3)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    print(
        f"peak memory of one training step of one video on {device} (GiB; ratio to "
        f"end-to-end at full fidelity)"
    )
    for encoder, snippets in (("tsm_r18", args.snippets_tsm), ("vit_s", args.snippets_vit)):
        frames = ENCODERS[encoder].frames
        fidelities = lofi_fidelities(snippets, frames)
        rows = [
            (f"end-to-end {f.name} ({f.snippets}x{f.frames}x{f.size})", "lofi", f)
            for f in fidelities
        ]
        if encoder.startswith("vit_"):
            rows.append((f"LoSA adapters, full ({snippets}x{frames}x224)", "losa", fidelities[0]))
        rows.append(
            (f"head only, features of full ({snippets}x{frames}x224)", "head", fidelities[0])
        )
        print(f"\n{encoder}:")
        reference = None
        for label, mode, fidelity in rows:
            peak = step_peak_bytes(mode, encoder, fidelity, 1, head)
            reference = reference or peak
            print(f"  {label:<46} {peak / 2**30:7.3f} GiB  {peak / reference:6.3f}x", flush=True)


if __name__ == "__main__":
    main()
