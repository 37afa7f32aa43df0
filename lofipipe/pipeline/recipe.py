"""The LoFi recipe as one job (Xu et al., NeurIPS 2021, Sec. 3): stage 2 trains the encoder
and the head end to end at reduced fidelities; its adapted encoder then regenerates the
features at full fidelity; stage 3 trains a head from scratch on them (the encoder frozen)
and is evaluated. Every step resumes where it stopped: training runs resume from their
checkpoints, extraction skips the parts it has done."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lofipipe.errors import ConfigError
from lofipipe.layout import encoder_path
from lofipipe.pipeline.extract import ExtractSummary, run_extract
from lofipipe.pipeline.train import TrainSummary, run_train
from lofipipe.schemas.config import Config, config_with
from lofipipe.storage import Store


@dataclass
class RecipeSummary:
    adapt: TrainSummary
    features: ExtractSummary
    head: TrainSummary
    progress_line: str = ""

    @property
    def failed_videos(self) -> int:
        """Videos the regenerated features lack (training skips what has no data)."""
        return self.features.failed_videos

    def lines(self, root: Store) -> list[str]:
        return [
            "== stage 2: LoFi end to end",
            *self.adapt.lines(root),
            "== full-fidelity features from the adapted encoder",
            *self.features.lines(root),
            "== stage 3: the head on the new features (evaluation below)",
            *self.head.lines(root),
        ]


def run_lofi_recipe(
    config: Config, root: Store, storage_options: Mapping[str, Any], command: str
) -> RecipeSummary:
    """Runs (or resumes) the recipe as runs `<run>-lofi` and `<run>-head`."""
    settings = config.train
    if not settings.run:
        raise ConfigError("train.run: name the run (--run NAME)")
    adapt_run, head_run = f"{settings.run}-lofi", f"{settings.run}-head"
    adapt = run_train(
        config_with(
            config, train={"mode": "lofi", "run": adapt_run, "epochs": settings.encoder_epochs}
        ),
        root,
        storage_options,
        command,
    )
    extract_config = config_with(
        config,
        extract={
            "encoder": settings.encoder,
            "losa": False,
            "checkpoint": root.url_of(encoder_path(adapt_run)),
        },
    )
    features = run_extract(extract_config, root, storage_options, command)
    head = run_train(
        config_with(
            config, train={"mode": "head", "run": head_run, "features": features.fingerprint}
        ),
        root,
        storage_options,
        command,
    )
    return RecipeSummary(adapt, features, head)
