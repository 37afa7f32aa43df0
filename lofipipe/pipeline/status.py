"""What ROOT holds, stage by stage: done, pending and failed (with reasons), the feature
sets with their lineage, and the training runs with their best validation mAP. Read-only,
from the manifests, commit markers and run files the stages write."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import yaml

from lofipipe.data.features import list_features, origin_of, preprocess_preset_of
from lofipipe.data.manifest import manifest_rows, ok_videos
from lofipipe.data.runs import read_metrics, run_names
from lofipipe.errors import failure_reason
from lofipipe.layout import (
    ERRORS_PATH,
    MANIFEST_PATH,
    MATERIALIZE_CONFIG_PATH,
    predictions_path,
    run_config_path,
)
from lofipipe.pipeline.materialize import frame_codec, materialize_preprocess, plan_jobs
from lofipipe.schemas.config import Config, build
from lofipipe.schemas.schedule import load_schedule
from lofipipe.schemas.tables import ERRORS, SKIPPED_EXTENSION, UNLABELLED
from lofipipe.storage import Store


def _reasons(counter: Counter) -> str:
    return ", ".join(f"{reason} {count}" for reason, count in sorted(counter.items()))


@dataclass
class RootStatus:
    lines: list[str] = field(default_factory=list)

    def add(self, line: str = "") -> None:
        self.lines.append(line)


def _ingest(root: Store, out: RootStatus) -> list[dict[str, Any]]:
    if not root.exists(MANIFEST_PATH):
        out.add("ingest: pending (no manifest)")
        return []
    rows = list(manifest_rows(root).values())
    ok = [r for r in rows if r["status"] == "ok"]
    failed = Counter(failure_reason(r["error"] or "unknown") for r in rows if r["status"] != "ok")
    hours = sum(r["duration"] or 0.0 for r in ok) / 3600
    out.add(
        f"ingest: done, {len(ok)} videos ok ({hours:.2f} h), {sum(failed.values())} "
        f"failed" + (f" ({_reasons(failed)})" if failed else "")
    )
    subsets = Counter(r["subset"] or UNLABELLED for r in ok)
    out.add(f"  subsets of the ok videos: {_reasons(subsets)}")
    if root.exists(ERRORS_PATH):
        issues = ERRORS.check(root.read_table(ERRORS_PATH), root.url_of(ERRORS_PATH)).to_pylist()
        skipped = sum(r["reason"] == SKIPPED_EXTENSION for r in issues)
        if skipped:
            out.add(f"  other files skipped (not a video extension): {skipped}")
        annotation = Counter(r["reason"] for r in issues if r["stage"] == "annotations")
        if annotation:
            out.add(f"  annotation issues: {_reasons(annotation)}")
    return ok


def _materialize(root: Store, out: RootStatus) -> None:
    if not root.exists(MATERIALIZE_CONFIG_PATH):
        out.add("materialize: pending (no shards)")
        return
    saved = yaml.safe_load(root.read_text(MATERIALIZE_CONFIG_PATH)) or {}
    config = build(Config, saved)
    settings = config.materialize
    schedule = load_schedule(settings.schedule)
    jobs, done = plan_jobs(
        root,
        schedule,
        ok_videos(root),
        settings.videos_per_shard,
        frame_codec(settings),
        materialize_preprocess(config),
    )
    out.add(f"materialize ({schedule.name}, {settings.encoding}):")
    for fidelity in schedule.fidelities:
        records = done[fidelity.name]
        failed = Counter(
            reason for r in records for reason, n in r["failures"].items() for _ in range(n)
        )
        pending = [job for job in jobs if fidelity.name in job.fidelities]
        state = "done" if not pending else f"{len(pending)} shards pending"
        out.add(
            f"  {fidelity.name}: {state}, {len(records)} shards, "
            f"{sum(len(r['videos']) for r in records)} videos ok, "
            f"{sum(failed.values())} failed" + (f" ({_reasons(failed)})" if failed else "")
        )


def _features(root: Store, ok: list[dict[str, Any]], out: RootStatus) -> None:
    found = list_features(root)
    if not found:
        out.add("extract: pending (no feature sets)")
        return
    out.add(f"extract: {len(found)} feature sets")
    for item in found:
        state = (
            "done" if item["videos"] >= len(ok) else f"{len(ok) - item['videos']} videos pending"
        )
        weights = item["weights"][:19]  # sha256: and 12 hex digits
        out.add(
            f"  {item['fingerprint']}  {item['encoder']}, {item['videos']} videos "
            f"({state}), weights {weights}, schedule {item['schedule']}, "
            f"preprocess {preprocess_preset_of(item)}, {origin_of(item)}"
        )


def _runs(root: Store, out: RootStatus) -> None:
    names = run_names(root)
    if not names:
        out.add("train: no runs")
        return
    out.add(f"train: {len(names)} runs")
    for name in names:
        saved = (yaml.safe_load(root.read_text(run_config_path(name))) or {}).get("train", {})
        epochs = read_metrics(root, name, kinds=("epoch",))
        total = saved.get("epochs", "?")
        finished = root.exists(predictions_path(name)) and len(epochs) == total
        state = "done" if finished else f"{len(epochs)}/{total} epochs"
        best = max(epochs, key=lambda r: r["val_average_map"], default=None)
        score = (
            f", best val average mAP {100 * best['val_average_map']:.2f} (epoch {best['epoch']})"
            if best
            else ""
        )
        out.add(f"  {name}: {saved.get('mode', '?')}, {state}{score}")


def root_status(root: Store) -> RootStatus:
    """Every stage's state under `root`, as lines of text."""
    out = RootStatus()
    ok = _ingest(root, out)
    _materialize(root, out)
    _features(root, ok, out)
    _runs(root, out)
    return out
