"""LoSA mode (Gupta et al., WACV 2025): LoFi's end-to-end loop on the full-fidelity shards,
with a frozen ViT backbone and trainable adapters in place of a fine-tuned encoder."""

from __future__ import annotations

from typing import Any

from lofipipe.training.lofi_trainer import LofiTrainer
from lofipipe.training.trainer import StepPlan, steps_per_pass


class LosaTrainer(LofiTrainer):
    """LoSA mode (Gupta et al., WACV 2025): a frozen ViT backbone run without gradients,
    its LoSA adapters, gated fusion and the head trained on full-fidelity snippets. The
    adapted encoder (backbone and adapters) is `runs/<run>/encoder.pt`, which
    `extract --losa --checkpoint` loads."""

    def epoch_plan(self, epoch: int) -> list[StepPlan]:
        size = self.job.settings.batch_size
        return [StepPlan(self.schedule.full.name, size)] * steps_per_pass(
            len(self.job.train_videos), size
        )

    def description(self) -> dict[str, Any]:
        return {
            "mode": "losa",
            "encoder": self.job.settings.encoder,
            "schedule": self.schedule.name,
        }
